"""The small public API: every name in ``enroll.__all__`` and ``matcher.__all__`` resolves
(on first use, so importing a package stays light), and the examples in the docstrings run
as written (doctest)."""

from __future__ import annotations

import doctest
import importlib
import subprocess
import sys

import pytest

import enroll
import matcher
from tests.tambua.test_server import REPO

DOCTESTED = ("matcher.engine", "matcher.calibration", "matcher.store")


@pytest.mark.parametrize("package", [enroll, matcher], ids=["enroll", "matcher"])
def test_every_public_name_resolves(package):
    for name in package.__all__:
        home = importlib.import_module(package._HOMES[name])
        assert getattr(package, name) is getattr(home, name), name
    with pytest.raises(AttributeError):
        package.no_such_thing  # noqa: B018


def test_importing_a_package_imports_none_of_its_modules():
    code = "import sys, enroll, matcher; print(sorted(m for m in sys.modules if m.startswith(('enroll.', 'matcher.'))))"
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr


@pytest.mark.parametrize("module", DOCTESTED)
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0
