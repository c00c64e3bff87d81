"""A local multi-node Ray cluster on loopback, for the cluster tests and ``bench.cluster``:
a head and worker nodes started with Ray's own ``ray start --block`` (one after another: two
at once race for the plasma socket), each stopped by its PID; a node is killed by SIGKILL
of its ``ray start`` process and every process under it. Never ``ray stop`` (it kills every
Ray process on the host by name), never pkill. Recipes and pitfalls:
../shared/notes/recipes.md."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOST = "127.0.0.2"  # Ray rewrites 127.0.0.1 and localhost to the eth0 address
RAY = str(Path(sys.executable).with_name("ray"))
# As an operator sets them, RAY_<setting> in the nodes' environment: a node that stops
# answering is declared dead after 3 missed checks 0.5 s apart (Ray's default is about
# 14 s), and actors run at normal priority (Ray's default niceness 15, meant for batch
# work, would let every raylet, front-end and client on the machine take a shard's core).
ENV = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_health_check_period_ms="500",
           RAY_health_check_failure_threshold="3", RAY_worker_niceness="0")
_READY = "will now block forever"


def free_port(host: str = HOST) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_ready(proc: subprocess.Popen, log: Path, timeout_s: float = 90) -> None:
    """Until the ``ray start --block`` writing ``log`` says it is up (fails if it exits)."""
    deadline = time.monotonic() + timeout_s
    while _READY not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"ray start failed: {log.read_text()[-2000:]}")
        time.sleep(0.2)


class RayCluster:
    """``ray start`` processes on ``HOST``: ``nodes[0]`` is the head."""

    def __init__(self) -> None:
        # Unix socket paths must stay under ~107 characters: a short folder of our own.
        self.root = Path(tempfile.mkdtemp(prefix="tr", dir="/tmp"))
        self.port = free_port()
        self.address = f"{HOST}:{self.port}"
        self.nodes: list[subprocess.Popen] = []

    def _start(self, args: list[str]) -> subprocess.Popen:
        log = self.root / f"node{len(self.nodes)}.log"
        proc = subprocess.Popen([RAY, "start", *args, f"--node-ip-address={HOST}", "--num-cpus=1",
                                 "--memory=2000000000", "--object-store-memory=150000000",
                                 "--disable-usage-stats", "--block"],
                                stdout=log.open("w"), stderr=subprocess.STDOUT, env=ENV, start_new_session=True)
        wait_ready(proc, log)
        self.nodes.append(proc)
        return proc

    def start(self, workers: int = 2) -> "RayCluster":
        self._start(["--head", f"--port={self.port}", "--include-dashboard=false", f"--temp-dir={self.root}"])
        for _ in range(workers):
            self.add_worker()
        return self

    def add_worker(self) -> subprocess.Popen:
        return self._start([f"--address={self.address}"])

    def node_of(self, pid: int) -> int:
        """Which of ``nodes`` runs process ``pid`` (an actor's worker)."""
        return next(i for i, proc in enumerate(self.nodes) if pid in _descendants(proc.pid))

    def kill_node(self, index: int) -> None:
        """SIGKILL a worker node: its ``ray start``, its raylet and every process under it."""
        proc = self.nodes[index]
        doomed = _descendants(proc.pid) | {proc.pid}
        for pid in doomed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=30)

    def stop(self) -> None:
        stop_nodes(self.nodes, self.root)


def stop_nodes(nodes: list[subprocess.Popen], root: Path) -> None:
    """SIGTERM each ``ray start --block`` (workers first), then SIGKILL what is left of the
    cluster: every process that was under a node when it was asked to stop (a node's agents
    outlive their raylet, renamed ``ray::DashboardAgent``, and ignore SIGTERM), and every
    process whose command line names its temp folder ``root`` (actor workers outlive their
    raylet for a moment). By PID only: never ``ray stop``, never pkill."""
    tree = set().union(*(_descendants(proc.pid) for proc in nodes)) if nodes else set()
    for proc in reversed(nodes):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in nodes:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (int(entry.name) in tree or str(root).encode() in (entry / "cmdline").read_bytes()):
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass
    shutil.rmtree(root, ignore_errors=True)


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found
