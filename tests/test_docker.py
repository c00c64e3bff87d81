"""The deployment files name what the server reads, and the compose file's TLS deployment
works: its preparation commands run as written, and a real server started with the
compose environment (secret mounts mapped to the files they mount) serves API keys on
one port and registered client certificates on the other.

Docker cannot run here, so this is as close as a test gets: every file, variable and port
the compose file and the Dockerfile name is checked against what the server reads.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from tambua.config import Config
from tambua.v1 import tambua_pb2 as pb
from tambua.v1 import tambua_pb2_grpc as pb_grpc
from tests.tambua.test_server import REPO

yaml = pytest.importorskip("yaml", reason="pyyaml is a test dependency (make setup)")

DOCKER = REPO / "docker"
SETTINGS = {f"TAMBUA_{f.name.upper()}" for f in dataclasses.fields(Config)}
OTHER_VARIABLES = {"TAMBUA_MODEL_DIR", "TAMBUA_KEK"}  # models.paths; store.sealing.load_kek


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _dockerfile_env() -> dict[str, str]:
    env = {}
    text = (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(re.findall(r"(\w+)=(\S+)", line))
    return env


def test_every_variable_the_deployment_sets_is_one_the_server_reads():
    service = _compose()["services"]["tambua"]
    names = set(service["environment"]) | {k for k in _dockerfile_env() if k.startswith("TAMBUA_")}
    assert names <= SETTINGS | OTHER_VARIABLES, names - SETTINGS - OTHER_VARIABLES
    secrets = _compose()["secrets"]
    for name, value in service["environment"].items():
        if str(value).startswith("/run/secrets/"):
            secret = value.removeprefix("/run/secrets/")
            assert secret in service["secrets"] and secret in secrets, f"{name} names an unmounted secret"
    published = {int(p.split(":")[1]) for p in service["ports"]}
    assert {Config.port, int(service["environment"]["TAMBUA_MTLS_PORT"]),
            int(service["environment"]["TAMBUA_WEB_PORT"])} <= published
    assert {"TAMBUA_TLS_CERT", "TAMBUA_TLS_KEY", "TAMBUA_KEK_FILE"} <= set(service["environment"])


def test_the_compose_deployment_serves_tls_from_its_mounted_secrets(tmp_path, orl, models):
    root = tmp_path / "repo"
    (root / "docker").mkdir(parents=True)
    shutil.copy(DOCKER / "compose.yaml", root / "docker" / "compose.yaml")
    (root / ".venv").symlink_to(REPO / ".venv")
    header = (DOCKER / "compose.yaml").read_text()
    steps = re.findall(r"^#\s+(\.venv/bin/tambua .+)$", header, re.M)
    assert len(steps) == 2, steps  # certificates and the KEK, as the header says
    for step in steps:
        r = subprocess.run(["bash", "-c", step], cwd=root, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"{step}: {r.stderr}"
    compose = _compose()
    mounted = {name: root / "docker" / s["file"] for name, s in compose["secrets"].items()}
    assert all(p.exists() for p in mounted.values()), [str(p) for p in mounted.values() if not p.exists()]

    def container_path(value: str) -> str:
        return str(mounted[value.removeprefix("/run/secrets/")]) if value.startswith("/run/secrets/") else value

    env = {k: v for k, v in os.environ.items() if not k.startswith("TAMBUA_")}
    env.update(_dockerfile_env())
    env.update({k: container_path(str(v)) for k, v in compose["services"]["tambua"]["environment"].items()})
    # Loopback and free ports for the test; the data volume in tmp.
    env.update(TAMBUA_HOST="127.0.0.1", TAMBUA_PORT="0", TAMBUA_MTLS_PORT="0", TAMBUA_METRICS_PORT="-1",
               TAMBUA_WEB_PORT="0",
               TAMBUA_DATA_DIR=str(tmp_path / "data"), TAMBUA_MODEL_DIR=str(models), PATH=os.environ["PATH"])
    env.pop("NUMBA_CACHE_DIR", None)
    entry = re.search(r'ENTRYPOINT \["(\w+)"\]\s+CMD \["(\w+)"\]', (DOCKER / "Dockerfile").read_text())
    server = subprocess.Popen([str(REPO / ".venv" / "bin" / entry.group(1)), entry.group(2)], cwd=root, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = server.stdout.readline()
        m = re.search(r"listening on \S+:(\d+) \(client certificates on \S+:(\d+)\)", line)
        assert m, f"no TLS server in mixed mode: {line!r}"
        assert "(web on https://" in line, f"no adjudication pages over HTTPS: {line!r}"
        key_port, cert_port = m.groups()

        def tambua(*args: str) -> dict:
            r = subprocess.run([str(REPO / ".venv" / "bin" / "tambua"), *args], cwd=root, env=env,
                               capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, r.stderr
            return json.loads(r.stdout)

        admin = tambua("keys", "create", "--name", "admin", "--role", "admin", "--json")["api_key"]
        tambua("keys", "create", "--name", "tablet", "--role", "registrar", "--cert",
               str(root / "docker" / "secrets" / "tablet.pem"), "--json")
        ca = mounted["client_ca"].read_bytes()  # dev-certs: one CA for the server and the clients
        with grpc.secure_channel(f"localhost:{key_port}", grpc.ssl_channel_credentials(ca)) as ch:
            stats = pb_grpc.MatcherStub(ch).Stats(pb.StatsRequest(), metadata=[("authorization", f"Bearer {admin}")],
                                                  timeout=30)
            assert stats.subjects == 0
        tablet = grpc.ssl_channel_credentials(ca, (root / "docker" / "secrets" / "tablet.key").read_bytes(),
                                              (root / "docker" / "secrets" / "tablet.pem").read_bytes())
        with grpc.secure_channel(f"localhost:{cert_port}", tablet) as ch:
            r = pb_grpc.MatcherStub(ch).Enroll(pb.EnrollRequest(subject_id="T-1", samples=[pb.Sample(
                modality=pb.FACE, image=(orl / "s5" / "1.pgm").read_bytes())]), timeout=60)
            assert r.outcome == pb.EnrollResponse.ENROLLED
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert oct((tmp_path / "data" / "subjects.sqlite").stat().st_mode & 0o777) == "0o600"


def test_the_image_copies_every_package_and_runs_code_that_exists():
    """The Dockerfile copies each package the project installs, and its build-time
    ``python -c`` lines import names that exist (a package move must not break the image)."""
    import importlib
    import tomllib

    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in include}
    copied = set(re.findall(r"^COPY (\w+) \1$", dockerfile, re.M))
    assert packages <= copied, packages - copied
    for module, name in re.findall(r'"from ([\w.]+) import (\w+);', dockerfile):
        assert hasattr(importlib.import_module(module), name), f"{module}.{name}"
    assert re.findall(r'"from ([\w.]+) import (\w+);', dockerfile)  # the check saw the warm-up line


def test_the_cluster_compose_file_fits_the_image_the_settings_and_the_ray_commands():
    """docker/compose.cluster.yaml (it cannot be built here): a Ray head, workers and a
    front-end from the one image, which installs the cluster extra; the front-end joins the
    head's port; head and front-end share the data volume at the image's data directory and
    the KEK at the path the front-end names (the coordinator opens both on the head)."""
    import tomllib

    compose = yaml.safe_load((DOCKER / "compose.cluster.yaml").read_text())
    services, secrets = compose["services"], compose["secrets"]
    head, worker, front = services["ray-head"], services["ray-worker"], services["tambua"]
    for s in (head, worker, front):
        assert s["build"]["dockerfile"] == "docker/Dockerfile" and s["shm_size"]
        assert s["environment"]["RAY_USAGE_STATS_ENABLED"] == "0"
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(d.startswith("ray==") for d in extras["cluster"])
    assert '".[build,cluster]"' in (DOCKER / "Dockerfile").read_text()
    assert "cluster" in re.search(r'pip install --quiet -e "\.\[([\w,]+)\]"', (REPO / "Makefile").read_text()).group(1)
    port = re.search(r"--head .*--port=(\d+)", head["command"][0]).group(1)
    assert "ray start --block --head" in head["command"][0]
    assert f"--address={head['hostname']}:{port}" in worker["command"][0] and "--block" in worker["command"][0]
    env = front["environment"]
    assert env["TAMBUA_CLUSTER"] == f"{head['hostname']}:{port}"
    assert f"--address={env['TAMBUA_CLUSTER']}" in front["command"][0] and "--num-cpus=0" in front["command"][0]
    assert front["command"][0].endswith("exec tambua serve")
    names = {k for k in env if k.startswith("TAMBUA_")}
    assert names <= SETTINGS | OTHER_VARIABLES, names - SETTINGS - OTHER_VARIABLES
    data_dir = _dockerfile_env()["TAMBUA_DATA_DIR"]
    assert f"tambua-data:{data_dir}" in head["volumes"] and f"tambua-data:{data_dir}" in front["volumes"]
    kek = env["TAMBUA_KEK_FILE"].removeprefix("/run/secrets/")
    assert kek in head["secrets"] and kek in front["secrets"] and kek in secrets
    for name, value in env.items():
        if str(value).startswith("/run/secrets/"):
            assert value.removeprefix("/run/secrets/") in front["secrets"], name
