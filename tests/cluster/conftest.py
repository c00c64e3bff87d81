"""Fixtures of a real local multi-node Ray cluster on loopback (bench/ray_local.py): one per
module, or one of a test's own for tests that kill a node."""

from __future__ import annotations

import pytest

pytest.importorskip("ray", reason="cluster mode needs the cluster extra (make setup installs it)")

from bench.ray_local import RayCluster  # noqa: E402 - after the skip: it needs no ray, the fixtures do


def _running(workers: int = 2):
    cluster = RayCluster()
    try:
        yield cluster.start(workers=workers)
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def ray_cluster():
    """One cluster for a module's tests (a head and two workers)."""
    yield from _running()


@pytest.fixture
def fresh_cluster():
    """A cluster of this test's own (a head and two workers): for tests that kill a node."""
    yield from _running()
