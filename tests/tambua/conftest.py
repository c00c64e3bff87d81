"""Fixtures shared by the service tests."""

from __future__ import annotations

import pytest

from tests.tambua.test_server import Server


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory, models):
    """A real plain-text server on an empty data directory, one per test module."""
    s = Server(tmp_path_factory.mktemp("plain") / "data")
    s.start()
    yield s
    s.stop()
