"""Every command block of the README, run as written against real servers (and its
``python`` example, run as written too).

Each README ``sh`` block is found by its first line and run line by line in bash, in a
fresh working folder (``.venv`` linked into it, ``.venv/bin`` on ``PATH``), with what one
line exports carried to the next. What the test supplies, and nothing else: the sample
images the commands name (real ones from ``../shared/data``), free ports in place of
50051/50052, the values that ``<...>`` placeholders stand for (taken from what earlier
commands printed), the servers the commands talk to where the README starts them in
prose, and the other side of a sync (the country server). Blocks that cannot run in a
test are listed in ``NOT_RUN`` with the reason; a new block fails
:func:`test_every_block_is_run_or_listed` until it is run here or listed.
"""

from __future__ import annotations

import ast
import csv
import json
import os
import re
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from PIL import Image

from tests.tambua.test_server import REPO

README = (REPO / "README.md").read_text()
VENV_BIN = REPO / ".venv" / "bin"

NOT_RUN = {
    "make test": "it is this test suite: .ci/run runs it (checked below)",
    ".venv/bin/python -m bench.accuracy": "full-set benchmarks take minutes to hours; tests/bench runs the same "
                                          "CLIs on small inputs",
    "python -m tests.fuzz.run": "atheris is not a dependency; tests/fuzz runs the same targets under Hypothesis",
}


def blocks(lang: str = "sh") -> list[list[str]]:
    """Each ``lang`` block of the README as its lines (continuations joined; blank lines and,
    in shell blocks, comment-only lines dropped)."""
    out = []
    for body in re.findall(rf"```{lang}\n(.*?)```", README, re.S):
        lines = [line for line in body.replace("\\\n", " ").splitlines()
                 if line.strip() and not (lang == "sh" and line.lstrip().startswith("#"))]
        out.append(lines)
    return out


def block(first: str) -> list[str]:
    """The one sh block whose first line starts with ``first``."""
    found = [b for b in blocks() if b[0].startswith(first)]
    assert len(found) == 1, f"README has {len(found)} sh blocks starting {first!r}"
    return found[0]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Shell:
    """Runs README lines in bash in ``cwd``; exports persist from one line to the next."""

    def __init__(self, cwd: Path, **env: str) -> None:
        self.cwd = cwd
        (cwd / ".venv").symlink_to(REPO / ".venv")
        self.state = cwd.parent / f"{cwd.name}.env"
        base = {k: v for k, v in os.environ.items() if not k.startswith("TAMBUA_")}
        base.update(PATH=f"{VENV_BIN}:{os.environ['PATH']}", **env)
        subprocess.run(["bash", "-c", f"export -p > {self.state}"], env=base, check=True)
        self.printed: list[tuple[str, object]] = []
        self.ports: dict[str, str] = {}

    def _script(self, line: str) -> str:
        for default, port in self.ports.items():
            line = line.replace(f"localhost:{default}", f"localhost:{port}")
        return f"set -o pipefail\nsource {self.state}\n{line}\nrc=$?\nexport -p > {self.state}\nexit $rc\n"

    def run(self, line: str, address: str = "", **placeholders: str) -> object:
        """Run one line (``<name>`` placeholders filled in; ``address``: the server it talks
        to, as TAMBUA_ADDRESS); its JSON output parsed when ``--json``."""
        for name, value in placeholders.items():
            assert f"<{name}>" in line, f"{line!r} has no placeholder <{name}>"
            line = line.replace(f"<{name}>", value)
        script = self._script(line)
        if address:
            script = script.replace("\n" + line, f"\nexport TAMBUA_ADDRESS={address}\n{line}", 1)
        r = subprocess.run(["bash", "-c", script], cwd=self.cwd, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"README line failed: {line}\n{r.stderr[-3000:]}"
        out = json.loads(r.stdout) if "--json" in line.split("#")[0] else r.stdout
        self.printed.append((line, out))
        return out

    def json_of(self, text: str) -> dict:
        """What the first line containing ``text`` printed."""
        return next(out for line, out in self.printed if text in line)

    def start(self, line: str) -> "Background":
        """Start a long-running README line (a server) in the background."""
        return Background(["bash", "-c", f"source {self.state}\nexec {line}\n"], self.cwd)


class Background:
    """A server process (and its children: ``make run`` starts one) stopped by its PID's group."""

    def __init__(self, argv: list[str], cwd: Path, env: dict | None = None) -> None:
        # The log goes to a file, read back only when a stop hangs (the test says why).
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=self.log,
                                     text=True, start_new_session=True)
        said = []
        for self.line in self.proc.stdout:  # `make run` says what it built first
            said.append(self.line)
            if "listening on" in self.line:
                break
        assert "listening on" in self.line, f"server did not start: {''.join(said)[-2000:]!r}"
        self.address = re.search(r"listening on (\S+)", self.line).group(1)

    def stop(self, timeout_s: float = 60) -> None:
        """SIGTERM, then wait for the graceful stop; one that hangs is killed (nothing left
        running) and fails the test."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
                self.log.seek(0)
                raise AssertionError(f"the server did not stop within {timeout_s} s of SIGTERM; its log ends:\n"
                                     f"{self.log.read()[-6000:]}") from None


def _png(src: Path, dst: Path) -> None:
    Image.open(src).convert("L").save(dst)


# The first lines of the blocks the tests below run.
RUN = ("make setup", "make run", ".venv/bin/tambua enroll --subject A-001", ".venv/bin/tambua enroll --subject B-7",
       ".venv/bin/tambua enroll --subject C-3", ".venv/bin/tambua enroll --subject D-1", "tambua dev-certs", "tambua serve", "tambua keys create",
       "tambua keys review", "export TAMBUA_CA", "tambua keys new-kek > kek.next", "tambua audit verify", "tambua backup",
       "tambua sync identity", ".venv/bin/tambua import --manifest", ".venv/bin/tambua quality-report",
       ".venv/bin/tambua export --subject",
       "export RAY_USAGE_STATS_ENABLED")  # the cluster block: tests/cluster/test_readme_cluster.py


def test_every_block_is_run_or_listed():
    for b in blocks():
        run = any(b[0].startswith(first) for first in RUN)
        listed = any(line.startswith(tuple(NOT_RUN)) for line in b)
        assert run or listed, f"README block starting {b[0]!r} is neither run by this test nor listed in NOT_RUN"
    assert "make test" in (REPO / ".ci" / "run").read_text()  # the set-up block's second command


def test_set_up_is_idempotent():
    setup, test = block("make setup")
    r = subprocess.run(["bash", "-c", setup], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "models up to date" in r.stdout, r.stderr[-2000:]
    assert test.startswith("make test")


def test_quick_start_fingers_and_irises(tmp_path, orl, fingerprints, irises, models):
    work = tmp_path / "work"
    work.mkdir()
    for name, (person, shot) in {"photo1.jpg": (21, 1), "photo2.jpg": (21, 2), "today.jpg": (21, 3),
                                 "someone.jpg": (22, 1), "b7.jpg": (30, 1)}.items():
        Image.open(orl / f"s{person}" / f"{shot}.pgm").convert("RGB").save(work / name, quality=95)
    fvc = fingerprints / "fvc2002_db1_b"
    for name, finger in {"r_thumb.png": "101/101_1", "r_index.png": "102/102_1", "r_index_today.png": "102/102_3",
                         "c3_ri.png": "105/105_1"}.items():
        _png(fvc / f"{finger}.tif", work / name)
    mmu = irises / "mmu1"
    for name, (eye, shot) in {"c3_l.png": ("5_left", 0), "c3_l_today.png": ("5_left", 2),
                              "c3_r.png": ("5_right", 0)}.items():
        _png(sorted((mmu / eye).iterdir())[shot], work / name)
    port = _free_port()
    shell = Shell(work, TAMBUA_ADDRESS=f"127.0.0.1:{port}")
    (run,) = block("make run")
    assert run.startswith("make run ") and "ARGS" in run
    # `make run` with its options in ARGS (the README's line after the block), from the checkout.
    server = Background(["make", "-s", "run", f"ARGS=--port {port} --metrics-port -1 --data-dir {work}/tambua-data"],
                        REPO)
    try:
        assert server.address.endswith(f":{port}")
        quick = [shell.run(line) for line in block(".venv/bin/tambua enroll --subject A-001")]
        fingers = [shell.run(line) for line in block(".venv/bin/tambua enroll --subject B-7")]
        iris_lines = [shell.run(line) for line in block(".venv/bin/tambua enroll --subject C-3")]
    finally:
        server.stop()
    enrolled, duplicate, forced, record, verified, identified, ranked, _deleted, stats = quick
    assert enrolled["outcome"] == "ENROLLED"
    assert duplicate["outcome"] == "DUPLICATE" and duplicate["candidates"][0]["subject_id"] == "A-001"
    assert forced["outcome"] == "ENROLLED" and record["linked_subject_ids"] == ["A-001"]
    assert verified["match"] is True
    assert {c["subject_id"] for c in identified["candidates"]} == {"A-001", "A-002"}  # one person, twice
    # Someone else: nobody reaches the FPIR; asked for every ranked candidate, the gallery.
    assert ranked["candidates"] and all(c["fpir"] > 0.01 for c in ranked["candidates"])
    assert stats["subjects"] == 1  # A-001 deleted, A-002 enrolled anyway
    b7, b7_verified = fingers
    assert b7["outcome"] == "ENROLLED" and b7_verified["match"] is True
    c3, c3_verified, extracted = iris_lines
    assert c3["outcome"] == "ENROLLED" and c3_verified["match"] is True
    assert [(t["modality"], t["position"]) for t in extracted["templates"]] == [("finger", 2), ("iris", 2)]
    assert all(t["quality_components"] for t in extracted["templates"])
    assert (work / "tambua-data").is_dir() and not (REPO / "tambua-data").exists()


def test_adjudication_walkthrough_and_its_pages(tmp_path, orl, models):
    """The README's adjudication block against a quick-start server that also serves the
    pages (``--web-port``, as the README's prose says): the case it opens is on the queue
    page until the block decides it."""
    import urllib.request

    work = tmp_path / "adjudication"
    work.mkdir()
    for name, (person, shot) in {"photo1.jpg": (24, 1), "photo2.jpg": (24, 2)}.items():
        Image.open(orl / f"s{person}" / f"{shot}.pgm").convert("RGB").save(work / name, quality=95)
    server = Background([str(VENV_BIN / "tambua"), "serve", "--insecure", "--port", "0", "--metrics-port", "-1",
                         "--web-port", "0", "--data-dir", str(work / "tambua-data")], REPO)
    web = re.search(r"web on (\S+)\)", server.line).group(1)
    shell = Shell(work, TAMBUA_ADDRESS=server.address)
    try:
        enrolled, held, listed, shown, *rest = block(".venv/bin/tambua enroll --subject D-1")
        assert shell.run(enrolled)["outcome"] == "ENROLLED"
        case = shell.run(held)
        assert case["outcome"] == "DUPLICATE" and case["case_id"].startswith("C")
        assert [c["case_id"] for c in shell.run(listed)["cases"]] == [case["case_id"]]
        assert case["case_id"] in urllib.request.urlopen(f"{web}/", timeout=30).read().decode()
        assert shell.run(shown, **{"case id": case["case_id"]})["candidates"][0]["subject_id"] == "D-1"
        decide, get = rest
        assert shell.run(decide, **{"case id": case["case_id"]})["decision"]["subject_id"] == "D-1"
        assert shell.run(get)["encounters"] == 1
        assert case["case_id"] not in urllib.request.urlopen(f"{web}/", timeout=30).read().decode()
    finally:
        server.stop()


def test_legacy_import_block(tmp_path, orl, fingerprints, irises, models):
    """The README's manifest, written as it stands with real images at its paths, imported
    by its block: counts first, then nothing new."""
    work = tmp_path / "import"
    legacy = work / "legacy"
    (manifest,) = blocks("csv")
    images = {"face": lambda i: orl / f"s{30 + i}" / "1.pgm",
              "finger": lambda i: fingerprints / "fvc2000_db1_b" / f"{100 + i}" / f"{100 + i}_1.tif",
              "iris": lambda i: sorted((irises / "mmu1" / f"{i}_left").iterdir())[0]}
    rows = list(csv.DictReader(manifest))
    for row in rows:
        dst = legacy / row["path"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        _png(images[row["modality"]](int(row["subject_id"][-1])), dst)
    (legacy / "manifest.csv").write_text("\n".join(manifest) + "\n")
    server = Background([str(VENV_BIN / "tambua"), "serve", "--insecure", "--port", "0", "--metrics-port", "-1",
                         "--data-dir", str(work / "tambua-data")], REPO)
    shell = Shell(work, TAMBUA_ADDRESS=server.address)
    try:
        first, again = block(".venv/bin/tambua import --manifest")
        out = shell.run(first)
        assert (out["records"], out["samples"], out["enrolled"], out["failed"]) == (2, len(rows), 2, 0)
        assert len(list(csv.DictReader(open(legacy / "report.csv")))) == len(rows)
        out = shell.run(again)
        assert (out["enrolled"], out["already"]) == (0, 2)
        (report,) = block(".venv/bin/tambua quality-report")
        printed = shell.run(report)
        assert "subjects: 2" in printed and "face: 2 samples" in printed
        quality = json.loads((legacy / "quality.json").read_text())
        assert quality["totals"]["samples"] == {"face": 2, "finger": 1, "iris": 1}
        assert quality["missing"]["without_iris"] == 1 and "data-json" in (legacy / "quality.html").read_text()
        export, into = block(".venv/bin/tambua export --subject")
        exported = shell.run(export)
        assert exported["templates"] == 3 and exported["files"] == ["out/K-0001.an2", "out/iso/K-0001-fingers.fmr"]
        other = Background([str(VENV_BIN / "tambua"), "serve", "--insecure", "--port", "0", "--metrics-port", "-1",
                            "--data-dir", str(work / "country-data")], REPO)
        try:
            assert shell.run(into, **{"country server": other.address})["enrolled"] == 1
        finally:
            other.stop()
    finally:
        server.stop()


def test_security_walkthrough_keys_certificates_rotation_audit_backup(tmp_path, orl, models):
    work = tmp_path / "site"
    work.mkdir()
    for name, (person, shot) in {"photo1.jpg": (23, 1), "today.jpg": (23, 4)}.items():
        Image.open(orl / f"s{person}" / f"{shot}.pgm").convert("RGB").save(work / name, quality=95)
    ports = {"50051": str(_free_port()), "50052": str(_free_port())}
    shell = Shell(work, TAMBUA_PORT=ports["50051"], TAMBUA_MTLS_PORT=ports["50052"], TAMBUA_METRICS_PORT="-1",
                  TAMBUA_ADDRESS=f"localhost:{ports['50051']}")
    shell.ports = ports
    for line in block("tambua dev-certs"):
        shell.run(line)
    (toml,) = blocks("toml")
    (work / "tambua.toml").write_text("\n".join(toml) + "\n")
    (serve,) = block("tambua serve")
    server = shell.start(serve)
    try:
        assert f"client certificates on 127.0.0.1:{ports['50052']}" in server.line
        for line in block("tambua keys create"):
            placeholders = {"id": shell.json_of('--name "old tablet"')["id"]} if "<id>" in line else {}
            shell.run(line, **placeholders)
        listed = shell.json_of("tambua keys list")["principals"]
        assert {p["name"] for p in listed} == {"tablet K-12", "distribution point 3", "old tablet"}
        assert all(p["authentic"] for p in listed)
        tablet_key = shell.json_of('--name "tablet K-12"')["api_key"]
        old_key = shell.json_of('--name "old tablet"')["api_key"]
        export, enrol, verify = block("export TAMBUA_CA")
        shell.run(export)
        assert shell.run(enrol, **{"tablet K-12 key": tablet_key})["outcome"] == "ENROLLED"
        assert shell.run(verify)["match"] is True  # the distribution point's certificate, on its port
        refused = subprocess.run(["bash", "-c", shell._script(
            f"tambua enroll --api-key {old_key} --subject K-2 --face today.jpg --json")], cwd=work,
            capture_output=True, text=True, timeout=120)
        assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr  # the revoked key
        review, dry, made, rotated = block("tambua keys review")
        said = shell.run(review)
        assert "distribution point 3" in said and "never used since it was created" in said
        assert shell.run(dry)["would_revoke"] == []  # nothing is 90 days idle on a new site
        k14 = shell.run(made)
        assert abs(k14["expires_unix_ms"] - (time.time() + 90 * 86400) * 1000) < 600_000
        new = shell.run(rotated, id=k14["id"])
        assert new["replaces"] == k14["id"] and new["api_key"].startswith("tmb_")
        for line in block("tambua keys new-kek > kek.next"):
            shell.run(line)
        (audit,) = [shell.run(line) for line in block("tambua audit verify")]
        assert audit["ok"] and audit["entries"] >= 6  # grants, revocation, seal, calls
        backup, _restored = [shell.run(line) for line in block("tambua backup")]
        assert backup["subjects"] == 1 and backup["audit_head"].split(":")[0] == str(audit["entries"])
    finally:
        server.stop()
    assert (work / "tambua-restored" / "subjects.sqlite").exists()
    # After the rotation the store opens with the new key only (the one `mv` put in place).
    assert shell.run("tambua keys list --json")["principals"]


def test_field_site_sync(tmp_path, orl, models):
    work = tmp_path / "sync"
    work.mkdir()
    shell = Shell(work)
    lines = block("tambua sync identity")
    identity, peer_add, *online = lines
    shell.run(identity)
    # The country server's side, which the README leaves to "the reverse at the country".
    shell.run("tambua sync identity --data-dir country-data --site-id country > country.json")
    shell.run(peer_add)
    shell.run("tambua sync peer add kakuma-3.json --data-dir country-data")
    servers = {}
    try:
        for site in ("field", "country"):
            servers[site] = Background([str(VENV_BIN / "tambua"), "serve", "--insecure", "--port", "0",
                                        "--metrics-port", "-1", "--data-dir",
                                        str(work / ("field-data" if site == "field" else "country-data"))], work)
        for person in (31, 32):
            shell.run(f"tambua enroll --address {servers['field'].address} --subject F-{person} "
                      f"--face {orl / f's{person}' / '1.pgm'} --json")
        # Each line talks to the server its comment names.
        out = [shell.run(line, address=servers["country" if "at the country server" in line else "field"].address)
               for line in online]
    finally:
        for s in servers.values():
            s.stop()
    exported, imported, acked, status, doctor = out
    assert exported["changes"] == 2 and imported["applied"] == 2 and acked["acked_seq"] == 2
    assert status["site"] == "kakuma-3" and status["peers"][0]["pending"] == 0
    assert doctor["ok"] and {f["about"] for f in doctor["findings"] if f["check"] == "sync_lag"} == {"kakuma-3"}


def test_python_block_runs_as_written(tmp_path, orl, models):
    """The library example runs in a fresh folder holding the photo it names, and shows what
    its comment says: the model id, the vector shape and a quality in 0..100."""
    (example,) = blocks("python")  # another python block fails here until it is run too
    Image.open(orl / "s12" / "1.pgm").convert("RGB").save(tmp_path / "photo.jpg", quality=95)
    shown = next(line.split("#")[0].strip() for line in example if line.startswith("template.model_id"))
    script = "\n".join(example) + f"\nprint(repr(({shown})))"
    r = subprocess.run([str(VENV_BIN / "python"), "-c", script], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 0, r.stderr[-2000:]
    model, shape, quality = ast.literal_eval(r.stdout.splitlines()[-1])
    assert (model, shape) == ("face/dlib-resnet-v1", (128,)) and 0 <= quality <= 100
