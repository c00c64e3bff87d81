"""The small public API: every name in ``enroll.__all__``, ``matcher.__all__`` and ``store.__all__`` resolves
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
import store
from tests.tambua.test_server import REPO

DOCTESTED = ("matcher.engine", "matcher.fusion", "matcher.calibration", "matcher.types", "cluster.layout",
             "tambua.web.render")


@pytest.mark.parametrize("package", [enroll, matcher, store], ids=["enroll", "matcher", "store"])
def test_every_public_name_resolves(package):
    for name in package.__all__:
        home = importlib.import_module(package._HOMES[name])
        assert getattr(package, name) is getattr(home, name), name
    with pytest.raises(AttributeError):
        package.no_such_thing  # noqa: B018


def test_importing_a_package_imports_none_of_its_modules():
    code = ("import sys, enroll, matcher, store; "
            "print(sorted(m for m in sys.modules if m.startswith(('enroll.', 'matcher.', 'store.'))))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr


@pytest.mark.parametrize("module", DOCTESTED)
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0
