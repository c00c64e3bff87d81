"""A `tambua serve` process for the benchmarks that measure a real server (plain text, on
loopback, a port of its own), started and stopped by PID."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def serve(data_dir: Path, *args: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """Start a server on ``data_dir`` (more ``serve`` options in ``args``): (process, address)."""
    proc = subprocess.Popen([sys.executable, "-m", "tambua.cli", "serve", "--insecure", "--port", "0",
                             "--metrics-port", "-1", "--data-dir", str(data_dir), *args],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        line = proc.stdout.readline()
    except BaseException:  # interrupted while it loads: it goes too
        proc.kill()
        raise
    if "listening on" not in line:
        proc.kill()
        raise RuntimeError(f"the server did not start: {line!r}")
    return proc, line.split("listening on ")[1].split()[0]
