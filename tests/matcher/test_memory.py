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
