"""Huge pages for gallery memory: the environment a process gets, and what it gets from it."""

import subprocess
import sys

import pytest

from matcher import memory

# A 256 MB FAISS flat index (numpy madvises its own large arrays; FAISS's buffers are glibc's).
BIG = ("import faiss, numpy as np; from matcher import memory; index = faiss.IndexFlatL2(128); "
       "x = np.ones((500_000, 128), np.float32); index.add(x); del x; print(memory.huge_page_bytes())")


def test_the_setting_is_added_to_the_operators_tunables_once_and_can_be_turned_off():
    env = memory.environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert env == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"}
    assert memory.asked(env)
    assert memory.environment(env) == {}  # already set: a re-started process does not start again
    assert memory.environment({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) == {}  # the operator said no
    assert not memory.asked({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})
    assert memory.environment({memory.OPT_OUT: "0"}) == {}
    assert memory.environment({}) == {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}


def _huge_bytes(env: dict[str, str]) -> int:
    out = subprocess.run([sys.executable, "-c", BIG], env=env, capture_output=True, text=True, check=True)
    return int(out.stdout)


@pytest.mark.skipif(memory.system_setting() != "madvise", reason="the kernel gives huge pages only when asked "
                    f"(transparent_hugepage {memory.system_setting()!r}, not madvise)")
def test_a_process_started_with_the_setting_holds_a_faiss_index_on_huge_pages():
    import os

    base = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    assert _huge_bytes(base) == 0
    assert _huge_bytes({**base, **memory.environment(base)}) >= 128 << 20


FRAGMENTS = """
import threading
from matcher import memory

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

def churn():
    pages = [[bytes(12_000) for _ in range(10_000)] for _ in range(3)]  # 360 MB of template-sized buffers
    del pages

threads = [threading.Thread(target=churn) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
before = rss()
memory.release()
print(before, rss())
"""


def test_release_gives_back_what_threads_freed():
    out = subprocess.run([sys.executable, "-c", FRAGMENTS], capture_output=True, text=True, check=True)
    before, after = map(int, out.stdout.split())
    assert after < before / 2, (before, after)


def test_a_program_restarts_itself_once_with_the_setting_and_keeps_its_pid_and_arguments():
    import os

    script = ("import os, sys; from matcher import memory; print('start', flush=True); "
              "memory.restart_with_huge_pages(); print(os.getpid(), memory.asked(), sys.argv[1:])")
    base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", memory.OPT_OUT)}
    proc = subprocess.Popen([sys.executable, "-c", script, "--flag", "x"], env=base, stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=60)
    assert out.splitlines() == ["start", "start", f"{proc.pid} True ['--flag', 'x']"]  # started twice, once restarted
    off = subprocess.run([sys.executable, "-c", script], env={**base, memory.OPT_OUT: "0"}, capture_output=True, text=True)
    lines = off.stdout.splitlines()
    assert len(lines) == 2 and lines[0] == "start" and lines[1].endswith(" False []")  # turned off: not restarted


LOADED = """
import gc, time
from matcher import memory

gallery = [[i, (i, str(i))] for i in range(1_000_000)]  # a Python object per template, as galleries hold

def full_collection_s():
    t = time.perf_counter(); gc.collect(); return time.perf_counter() - t

before = full_collection_s()
memory.freeze_loaded()
print(before, full_collection_s(), gc.get_freeze_count() >= 1_000_000, len(gallery))
"""


def test_a_frozen_gallery_is_no_longer_walked_by_full_collections():
    out = subprocess.run([sys.executable, "-c", LOADED], capture_output=True, text=True, check=True).stdout.split()
    before, after = float(out[0]), float(out[1])
    assert out[2:] == ["True", "1000000"]  # the objects are still there, out of the collector's sight
    assert after < before / 5, (before, after)
