"""The README's quick start, run verbatim against the README's serve command."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def _block_after(text: str, marker: str) -> list[str]:
    """The shell lines of the first ```sh block after ``marker``, comments stripped."""
    block = re.search(re.escape(marker) + r".*?```sh\n(.*?)```", text, re.S)
    assert block, f"README has no sh block after {marker!r}"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.split("#")[0].strip()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_readme_quick_start(tmp_path, orl, models):
    readme = (REPO / "README.md").read_text()
    (serve,) = _block_after(readme, "Run the service")
    assert serve == "make run"
    run_cmd = re.search(r"make run\s+# = (\S+ serve --insecure)", readme).group(1)
    quick = _block_after(readme, "Quick start with the CLI")
    # The photos the quick start names: two of one ORL person, a third of them, someone else.
    photos = {"photo1.jpg": ("s21", 1), "photo2.jpg": ("s21", 2), "today.jpg": ("s21", 3), "someone.jpg": ("s22", 1)}
    for name, (person, shot) in photos.items():
        Image.open(orl / person / f"{shot}.pgm").convert("RGB").save(tmp_path / name, quality=95)
    (tmp_path / ".venv").symlink_to(REPO / ".venv")
    port = _free_port()
    env = dict(os.environ, TAMBUA_PORT=str(port), TAMBUA_METRICS_PORT="-1", TAMBUA_ADDRESS=f"127.0.0.1:{port}")
    server = subprocess.Popen(shlex.split(run_cmd), cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    try:
        assert "listening on" in server.stdout.readline()
        outputs = []
        for line in quick:
            r = subprocess.run(shlex.split(line), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, f"{line}: {r.stderr}"
            outputs.append(json.loads(r.stdout) if "--json" in line else r.stdout)
    finally:
        server.terminate()
        server.wait(timeout=30)
    enrolled, duplicate, forced, record, verified, identified, ranked, _deleted, stats = outputs
    assert enrolled["outcome"] == "ENROLLED"
    assert duplicate["outcome"] == "DUPLICATE" and duplicate["candidates"][0]["subject_id"] == "A-001"
    assert forced["outcome"] == "ENROLLED" and record["linked_subject_ids"] == ["A-001"]
    assert verified["match"] is True
    assert {c["subject_id"] for c in identified["candidates"]} == {"A-001", "A-002"}  # one person, twice
    # Someone else: nobody reaches the FPIR; asked for every ranked candidate, the gallery.
    assert ranked["candidates"] and all(c["fpir"] > 0.01 for c in ranked["candidates"])
    assert stats["subjects"] == 1  # A-001 deleted, A-002 enrolled anyway
    assert (tmp_path / "tambua-data").is_dir()  # the embedded default data directory
