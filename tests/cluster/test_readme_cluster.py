"""The README's cluster block, run as written: three Ray nodes on loopback (each ``ray
start --block`` line as a background process, as the README runs each in its own terminal),
a front-end, an enrolment, an identification and the cluster's status. The test supplies
free ports for 6380 and 50061, a fresh temp folder for /tmp/tambua-ray, and the photos."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from PIL import Image

from bench.ray_local import free_port, stop_nodes, wait_ready
from tests.tambua.test_readme import Background, Shell, block


def test_the_readme_starts_a_three_node_cluster_and_a_front_end(tmp_path, orl, models):
    work = tmp_path / "work"
    work.mkdir()
    for name, shot in (("photo1.jpg", 1), ("today.jpg", 2)):
        Image.open(orl / "s23" / f"{shot}.pgm").convert("RGB").save(work / name, quality=95)
    root = Path(tempfile.mkdtemp(prefix="tr", dir="/tmp"))  # Ray's socket paths must stay short
    ray_port, front_port = free_port(), free_port()
    shell = Shell(work)
    lines = [line.replace("6380", str(ray_port)).replace("/tmp/tambua-ray", str(root)).replace("50061", str(front_port))
             for line in block("export RAY_USAGE_STATS_ENABLED")]
    nodes, front = [], None
    try:
        shell.run(lines[0])
        for n, line in enumerate(lines[1:4]):
            assert line.startswith(".venv/bin/ray start --block")
            log = tmp_path / f"node{n}.log"
            nodes.append(subprocess.Popen(["bash", "-c", f"source {shell.state}\nexec {line}\n"], cwd=work,
                                          stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True))
            wait_ready(nodes[-1], log)
        assert lines[4].startswith(".venv/bin/tambua serve")
        front = shell.start(lines[4])
        enrolled, identified, status = (shell.run(line) for line in lines[5:8])
    finally:
        if front is not None:
            front.stop()
        stop_nodes(nodes, root)
    assert isinstance(front, Background) and front.address.endswith(f":{front_port}")
    assert enrolled["outcome"] == "ENROLLED"
    assert identified["candidates"][0]["subject_id"] == "K-001"
    assert len(status["nodes"]) == 3 and all(n["alive"] for n in status["nodes"])
    assert len(status["shards"]) == 6 and status["subjects"] == 1 and status["unserved_shards"] == []
    assert sorted(n["copies"] for n in status["nodes"]) == [2, 2, 2]
    assert {c["nice"] for c in status["shards"]} == {0}  # RAY_worker_niceness=0: searches at normal priority
    assert all(c["huge_pages"] for c in status["shards"])  # galleries on huge pages (matcher.memory)
