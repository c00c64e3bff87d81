"""Transparent huge pages for the processes that hold galleries.

A 1:N search streams its whole gallery through the CPU (a 1M-face flat scan reads 512 MB
a query; an iris or finger scan its packed codes). With 4 kB pages that is a page-table
walk every 4 kB; with 2 MB pages 512 times fewer. Measured on the 2-core VM: one thread's
1M x 128-D ``IndexFlatL2`` single query, 23.0 ms p50 on 4 kB pages, 17.3 ms on huge pages,
the same in a Ray actor (23.4 -> 18.5 ms).

Most kernels (Debian's included) give huge pages only to memory that asks for them
(``/sys/kernel/mm/transparent_hugepage/enabled`` = ``madvise``). glibc 2.35 and later asks
for all of its heap when ``GLIBC_TUNABLES`` holds ``glibc.malloc.hugetlb=1``, which covers
FAISS's and numpy's buffers alike without touching either library. glibc reads it once, at
process start: ``tambua serve`` starts itself again with it set, and the cluster's shard
actors get it in their runtime environment. An older glibc ignores it, and so does a kernel
set to ``never``; ``always`` needs none. ``TAMBUA_HUGE_PAGES=0`` turns it off.

:func:`release` is the other half: a process that has passed many small buffers through
(the cluster's coordinator pages every template to the shards, on many threads) keeps the
freed memory in glibc's per-thread arenas until asked to give it back.

:func:`freeze_loaded` keeps Python's collector off a loaded gallery: a process holds a Python
object per template, and a full (generation 2) collection walks every one of them. In a
shard holding 1M irises two such collections took 4.5 s during 108 queries, one query
waiting 2.4 s.

Owns the environment setting, the readings of what a process got, the release of freed
memory and the freezing of loaded objects; imports nothing of the project.
"""

from __future__ import annotations

import ctypes
import gc
import os
import sys
from collections.abc import Mapping
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb"
OPT_OUT = "TAMBUA_HUGE_PAGES"
_SYSTEM = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _tunables(environ: Mapping[str, str]) -> dict[str, str]:
    """The glibc tunables ``environ`` sets, name to value, in order."""
    return dict(t.partition("=")[::2] for t in environ.get("GLIBC_TUNABLES", "").split(":") if t)


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether a process started with ``environ`` should get the tunable: on Linux, not
    already set (by us or the operator, whatever its value) and not turned off."""
    return sys.platform.startswith("linux") and environ.get(OPT_OUT, "1") != "0" and TUNABLE not in _tunables(environ)


def environment(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The variables to add to ``environ`` for a process with huge pages (empty when not
    :func:`wanted`); the operator's other glibc tunables are kept."""
    if not wanted(environ):
        return {}
    return {"GLIBC_TUNABLES": ":".join(f"{k}={v}" for k, v in {**_tunables(environ), TUNABLE: "1"}.items())}


def restart_with_huge_pages() -> None:
    """Start this program again, same PID and arguments, with huge pages when
    :func:`wanted` (returns when not: already restarted, turned off, not Linux). For a
    program's entry point only (``tambua serve``, the search benchmarks): it replaces the
    process."""
    huge = environment()
    if huge:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, sys.orig_argv, {**os.environ, **huge})


def asked(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this process's glibc was told to ask for huge pages."""
    return _tunables(environ).get(TUNABLE, "0") != "0"


def system_setting() -> str:
    """The kernel's transparent huge page mode (``always``, ``madvise``, ``never``), or
    ``unknown`` where it cannot be read."""
    try:
        text = _SYSTEM.read_text()
    except OSError:
        return "unknown"
    return text[text.find("[") + 1:text.find("]")] if "[" in text else "unknown"


def huge_page_bytes() -> int:
    """This process's anonymous memory on huge pages now (0 where it cannot be read)."""
    try:
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                if line.startswith("AnonHugePages:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def release() -> bool:
    """Give the memory this process has freed back to the system (glibc's ``malloc_trim``:
    every arena, not only the main heap's top). False where the C library has no such call."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # the C library this process runs on
    return bool(trim(0)) if trim is not None else False


def freeze_loaded() -> None:
    """Collect once, then move every object alive now out of the collector's sight (they
    live as long as the process: the galleries just loaded). Objects made later (new
    enrolments, requests) are collected as before; a subject removed later is still freed
    by its reference count."""
    gc.collect()
    gc.freeze()
