"""The long, coverage-guided fuzz run (atheris, libFuzzer) over one target of harness.py.

    python -m tests.fuzz.run image -runs=200000          # libFuzzer flags pass through
    python -m tests.fuzz.run template -max_total_time=600

Seeds come from the harness; a finding stops the run with the input written to
``crash-*`` in the working folder (reproduce: ``python -m tests.fuzz.run TARGET crash-...``).
atheris is not a dependency of the service: ``pip install atheris`` for this run.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path


def main() -> None:
    import atheris

    with atheris.instrument_imports():
        from tests.fuzz.harness import TARGETS, check

    target = sys.argv[1]
    if target not in TARGETS:
        raise SystemExit(f"targets: {', '.join(sorted(TARGETS))}")
    corpus = Path(tempfile.mkdtemp(prefix=f"tambua-fuzz-{target}-"))
    for i, seed in enumerate(TARGETS[target][1]()):
        (corpus / f"seed-{i}").write_bytes(seed)
    args = [sys.argv[0], *sys.argv[2:]]
    if not any(not a.startswith("-") for a in sys.argv[2:]):
        args.append(str(corpus))
    atheris.Setup(args, lambda data: check(target, data))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
