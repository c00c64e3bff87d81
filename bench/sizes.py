"""The shared command line of the benchmarks that run once per size: ``--SIZES N [N ...]
--json OUT``, each size in its own scratch folder, one JSON line printed per run."""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable
from pathlib import Path


def sizes_cli(doc: str, flag: str, default: list[int], run: Callable[[int, Path], dict],
              argv: list[str] | None = None) -> int:
    """Parse ``--<flag> N ... --json OUT``, call ``run(n, folder)`` per size, write ``{"runs": [...]}``."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument(f"--{flag}", dest="sizes", type=int, nargs="+", default=default)
    p.add_argument("--json", required=True, type=Path)
    args = p.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            runs.append(run(n, Path(tmp) / str(n)))
            print(json.dumps(runs[-1]), flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
    return 0
