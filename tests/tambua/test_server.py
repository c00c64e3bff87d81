"""A real `tambua serve` process on a free port, driven over gRPC with real ORL faces."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import io

import grpc
import numpy as np
import pytest
from PIL import Image
from grpc_health.v1 import health_pb2, health_pb2_grpc

from matcher.face.template import EmbeddingTemplate
from tambua.v1 import tambua_pb2 as pb
from tambua.v1 import tambua_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[2]


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels.squeeze()).save(buf, format="PNG")
    return buf.getvalue()


class Server:
    """A `tambua serve` process. Plain text (``--insecure``) unless ``config`` (a TOML file
    with the TLS settings) is given; then ``connect`` opens TLS channels to it."""

    def __init__(self, data_dir: Path, config: Path | None = None, env: dict[str, str] | None = None,
                 args: tuple[str, ...] = ()) -> None:
        self.data_dir = data_dir
        self.config = config
        self.env = dict(os.environ, **(env or {}))
        self.args = args  # more `serve` options (they win over the defaults here)
        self.proc: subprocess.Popen | None = None
        self.address = ""

    def start(self) -> None:
        args = ["--config", str(self.config)] if self.config else ["--insecure"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tambua.cli", "serve", "--port", "0", "--metrics-port", "-1",
             "--data-dir", str(self.data_dir), *args, *self.args],
            cwd=REPO, stdout=subprocess.PIPE, text=True, env=self.env,
            stderr=open(self.env["TAMBUA_TEST_LOG"], "a") if "TAMBUA_TEST_LOG" in self.env else subprocess.DEVNULL,
        )
        line = self.proc.stdout.readline()
        m = re.search(r"listening on (\S+)", line)
        assert m, f"server did not start: {line!r}"
        self.address = m.group(1)
        certs = re.search(r"client certificates on (\S+)\)", line)  # mixed mode: a port for certificates
        self.mtls_address = certs.group(1) if certs else ""
        web = re.search(r"web on (\S+)\)", line)  # --web-port: the adjudication pages
        self.web = web.group(1) if web else ""
        if self.config is None:
            self.channel = grpc.insecure_channel(self.address)
            self.stub = pb_grpc.MatcherStub(self.channel)

    def connect(self, ca: Path, cert: Path | None = None, key: Path | None = None,
                address: str | None = None) -> grpc.Channel:
        """A TLS channel to localhost (the name the test server certificate carries), to
        ``address``'s port (default: the main one)."""
        creds = grpc.ssl_channel_credentials(ca.read_bytes(), key.read_bytes() if key else None,
                                             cert.read_bytes() if cert else None)
        return grpc.secure_channel(f"localhost:{(address or self.address).rsplit(':', 1)[1]}", creds)

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        if self.config is None:
            self.channel.close()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
        if self.config is None:
            self.channel.close()


def has_subject(stub, subject_id: str) -> bool:
    """Whether GetSubject finds the subject (any answer but NOT_FOUND fails the test)."""
    try:
        stub.GetSubject(pb.SubjectRequest(subject_id=subject_id), timeout=30)
        return True
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND
        return False


def face(orl: Path, person: int, shot: int) -> pb.Sample:
    return pb.Sample(modality=pb.FACE, image=(orl / f"s{person}" / f"{shot}.pgm").read_bytes())


@pytest.fixture
def server(tmp_path, orl, models):
    s = Server(tmp_path / "data")
    s.start()
    yield s
    s.stop()


def _enroll(stub, sid, sample, force=False):
    return stub.Enroll(pb.EnrollRequest(subject_id=sid, samples=[sample], force=force), timeout=60)


def test_enrol_dedup_verify_delete_and_survive_sigkill(server, orl):
    stub = server.stub
    health = health_pb2_grpc.HealthStub(server.channel)
    assert health.Check(health_pb2.HealthCheckRequest(service="")).status == health_pb2.HealthCheckResponse.SERVING
    for person in range(1, 9):
        r = _enroll(stub, f"P{person}", face(orl, person, 1))
        assert r.outcome == pb.EnrollResponse.ENROLLED and r.model_ids == ["face/dlib-resnet-v1"]
    dup = _enroll(stub, "again", face(orl, 3, 5))
    assert dup.outcome == pb.EnrollResponse.DUPLICATE and dup.candidates[0].subject_id == "P3"
    assert stub.Verify(pb.VerifyRequest(subject_id="P5", samples=[face(orl, 5, 8)])).match
    assert not stub.Verify(pb.VerifyRequest(subject_id="P5", samples=[face(orl, 6, 8)])).match
    stub.DeleteSubject(pb.SubjectRequest(subject_id="P8"))
    before = stub.Identify(pb.IdentifyRequest(samples=[face(orl, 2, 9)])).candidates
    server.kill()
    server.start()
    stub = server.stub
    assert stub.Stats(pb.StatsRequest()).subjects == 7
    after = stub.Identify(pb.IdentifyRequest(samples=[face(orl, 2, 9)])).candidates
    assert [(c.subject_id, round(c.score, 6)) for c in after] == [(c.subject_id, round(c.score, 6)) for c in before]
    with pytest.raises(grpc.RpcError) as e:
        stub.GetSubject(pb.SubjectRequest(subject_id="P8"))
    assert e.value.code() is grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    "sample, code",
    [
        pytest.param(pb.Sample(modality=pb.FACE, image=b""), grpc.StatusCode.INVALID_ARGUMENT, id="empty"),
        pytest.param(pb.Sample(modality=pb.FACE, image=b"not an image"), grpc.StatusCode.INVALID_ARGUMENT, id="junk"),
        pytest.param(pb.Sample(modality=pb.IRIS, position=1, image=b"x"), grpc.StatusCode.INVALID_ARGUMENT,
                     id="iris-junk"),
        pytest.param(pb.Sample(modality=pb.IRIS, position=3, image=b"x"), grpc.StatusCode.INVALID_ARGUMENT,
                     id="iris-position-3"),
        pytest.param(pb.Sample(modality=pb.FINGER, position=2, image=b"x"), grpc.StatusCode.INVALID_ARGUMENT,
                     id="finger-junk"),
        pytest.param(pb.Sample(modality=pb.FINGER, position=11, image=b"x"), grpc.StatusCode.INVALID_ARGUMENT,
                     id="finger-position-11"),
        pytest.param(pb.Sample(image=b"x"), grpc.StatusCode.INVALID_ARGUMENT, id="no-modality"),
        pytest.param(pb.Sample(modality=pb.FACE, template=b"TMBT\x01"), grpc.StatusCode.INVALID_ARGUMENT,
                     id="bad-template"),
        pytest.param(pb.Sample(modality=pb.FACE, image=b"\0" * (33 * 1024 * 1024)),
                     grpc.StatusCode.RESOURCE_EXHAUSTED, id="oversized"),
        pytest.param(pb.Sample(modality=pb.FACE, image=_png(np.full((300, 400, 3), 128, np.uint8) +
                                                           np.arange(400, dtype=np.uint8)[None, :, None] // 4)),
                     grpc.StatusCode.INVALID_ARGUMENT, id="no-face"),
        pytest.param(pb.Sample(modality=pb.FACE, template=EmbeddingTemplate(
            "face/other-v2", np.ones(128, np.float32)).to_bytes()), grpc.StatusCode.FAILED_PRECONDITION,
            id="other-model-template"),
        pytest.param(pb.Sample(modality=pb.FACE, image=_png(np.zeros((8000, 7000, 1), np.uint8).repeat(1, 2))),
                     grpc.StatusCode.INVALID_ARGUMENT, id="oversized-pixels"),
    ],
)
def test_bad_input_gets_a_status_and_stores_nothing(server, sample, code):
    with pytest.raises(grpc.RpcError) as e:
        _enroll(server.stub, "bad", sample)
    assert e.value.code() is code
    assert e.value.details()
    assert server.stub.Stats(pb.StatsRequest()).subjects == 0


@pytest.mark.parametrize("payload", [
    pytest.param(b"\x0a\xff\xff\xff\xff\x0f", id="length-past-the-end"),
    pytest.param(b"\x12\x05\x08", id="truncated-sample"),
    pytest.param(b"\xff" * 64, id="invalid-tags"),
])
def test_bytes_that_are_not_a_message_get_invalid_argument(server, payload):
    for method in ("Enroll", "Identify", "Verify", "Extract", "DeleteSubject"):
        call = server.channel.unary_unary(f"/tambua.v1.Matcher/{method}")  # raw bytes, no serializer
        with pytest.raises(grpc.RpcError) as e:
            call(payload, timeout=30)
        assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT and _reason(e.value) == "MALFORMED_REQUEST"
    assert server.stub.Stats(pb.StatsRequest()).subjects == 0


def test_parallel_enrolments(server, orl):
    outcomes = []

    def same(i):
        outcomes.append(_enroll(server.stub, f"same-{i}", face(orl, 11, 1 + i % 4)).outcome)

    def other(person):
        outcomes.append(_enroll(server.stub, f"O{person}", face(orl, person, 1)).outcome)

    threads = [threading.Thread(target=same, args=(i,)) for i in range(6)]
    threads += [threading.Thread(target=other, args=(p,)) for p in range(20, 26)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count(pb.EnrollResponse.ENROLLED) == 7
    assert server.stub.Stats(pb.StatsRequest()).subjects == 7


def test_cli_contract(server, orl, capsys):
    from tambua.cli import main

    img = str(orl / "s7" / "1.pgm")
    assert main(["enroll", "--address", server.address, "--subject", "C7", "--face", img, "--json"]) == 0
    import json

    out = json.loads(capsys.readouterr().out)
    assert out == {"outcome": "ENROLLED", "subject_id": "C7", "candidates": []}
    assert main(["verify", "--address", server.address, "--subject", "C7", "--face", str(orl / "s7" / "2.pgm"),
                 "--json"]) == 0
    v = json.loads(capsys.readouterr().out)
    assert v["match"] is True and set(v) == {"match", "score", "fmr"}
    assert main(["identify", "--address", server.address, "--face", img, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["candidates"][0]["subject_id"] == "C7"
    assert main(["delete", "--address", server.address, "--subject", "nobody"]) != 0
    assert "NOT_FOUND" in capsys.readouterr().err
    assert main(["stats", "--address", server.address, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["subjects"] == 1


def test_expired_deadline_stores_nothing(server, orl):
    import time

    with pytest.raises(grpc.RpcError) as e:
        server.stub.Enroll(pb.EnrollRequest(subject_id="late", samples=[face(orl, 12, 1)]), timeout=0.005)
    assert e.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    time.sleep(1.0)  # let the abandoned handler run to its end
    assert server.stub.Stats(pb.StatsRequest()).subjects == 0


def test_extract_then_enrol_compare_and_get_by_template(server, orl):
    stub = server.stub
    (tpl,) = stub.Extract(pb.ExtractRequest(samples=[face(orl, 13, 1)])).templates
    assert tpl.model_id == "face/dlib-resnet-v1" and 0 < tpl.quality <= 100
    as_sample = pb.Sample(modality=pb.FACE, template=tpl.data)
    assert stub.Enroll(pb.EnrollRequest(subject_id="T13", samples=[as_sample])).outcome == pb.EnrollResponse.ENROLLED
    same = stub.Compare(pb.CompareRequest(a=face(orl, 13, 2), b=as_sample))
    other = stub.Compare(pb.CompareRequest(a=face(orl, 14, 2), b=as_sample))
    assert same.score > other.score and same.fmr < 1e-3 < other.fmr
    got = stub.GetSubject(pb.SubjectRequest(subject_id="T13"))
    assert got.templates[0].data == tpl.data and got.created_unix_ms > 0
    forced = stub.Enroll(pb.EnrollRequest(subject_id="T13b", samples=[face(orl, 13, 3)], force=True,
                                          adjudicated_candidates=["T13"]))
    assert forced.outcome == pb.EnrollResponse.ENROLLED and forced.candidates[0].subject_id == "T13"
    assert list(stub.GetSubject(pb.SubjectRequest(subject_id="T13b")).linked_subject_ids) == ["T13"]


def _two_faces_jpeg(orl: Path) -> bytes:
    a, b = (np.asarray(Image.open(orl / f"s{p}" / "1.pgm").convert("L").resize((184, 224))) for p in (15, 16))
    canvas = np.full((320, 480), 200, np.uint8)
    canvas[48:272, 20:204], canvas[48:272, 276:460] = a, b
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_two_faces_truncated_and_unknown_subject_over_grpc(server, orl):
    whole = (orl / "s17" / "1.pgm").read_bytes()
    jpeg = io.BytesIO()
    Image.open(orl / "s17" / "1.pgm").save(jpeg, format="JPEG")
    cases = {
        "MULTIPLE_FACES": pb.Sample(modality=pb.FACE, image=_two_faces_jpeg(orl)),
        "IMAGE_TRUNCATED": pb.Sample(modality=pb.FACE, image=jpeg.getvalue()[: len(jpeg.getvalue()) // 2]),
    }
    for reason, sample in cases.items():
        with pytest.raises(grpc.RpcError) as e:
            _enroll(server.stub, "bad", sample)
        assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT, reason
        assert reason in _reason(e.value), e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        server.stub.Verify(pb.VerifyRequest(subject_id="nobody", samples=[pb.Sample(modality=pb.FACE, image=whole)]))
    assert e.value.code() is grpc.StatusCode.NOT_FOUND and "nobody" in e.value.details()
    assert server.stub.Stats(pb.StatsRequest()).subjects == 0


def _reason(err: grpc.RpcError) -> str:
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    info = error_details_pb2.ErrorInfo()
    for detail in rpc_status.from_call(err).details:
        if detail.Unpack(info):
            return info.reason
    return ""


def test_a_stop_signal_landing_on_another_thread_still_stops_the_server(tmp_path, models):
    """SIGTERM sent to one of gRPC's threads rather than the main one (the kernel may deliver
    a process's signal to any thread): the server still stops, promptly and cleanly."""
    import ctypes
    import platform

    tgkill = {"x86_64": 234, "aarch64": 131}.get(platform.machine())
    if tgkill is None:
        pytest.skip(f"no tgkill syscall number known for {platform.machine()}")
    s = Server(tmp_path / "data")
    s.start()
    try:
        others = [int(t) for t in os.listdir(f"/proc/{s.proc.pid}/task") if int(t) != s.proc.pid]
        assert others, "the server runs threads besides its main one"
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.syscall(tgkill, s.proc.pid, others[-1], signal.SIGTERM) == 0
        assert s.proc.wait(timeout=30) == 0
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
        s.channel.close()


def test_the_server_restarts_itself_once_with_huge_pages_for_its_galleries(plain_server):
    # glibc reads the setting only at start, so `tambua serve` starts again with it: the
    # same process (the PID the operator got), now with the tunable (matcher.memory).
    from matcher import memory

    environ = dict(v.split("=", 1) for v in Path(f"/proc/{plain_server.proc.pid}/environ").read_text().split("\0") if "=" in v)
    assert memory.asked(environ) and not memory.wanted(environ)
    reply = health_pb2_grpc.HealthStub(plain_server.channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
