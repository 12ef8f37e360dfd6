"""pytest plugin for the unit tier: TensorFlow (and everything that imports it) cannot be imported.

    python -m pytest -p tests.no_tensorflow -m unit

Installs an import blocker in this process and, through PYTHONPATH + sitecustomize, in every
Python subprocess the tests start (`python -m optkit.cli ...`), so a `unit` test that reaches
TensorFlow fails with "blocked in the unit tier" instead of silently paying 4 s per import.
"""
from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SITE = os.path.join(HERE, "no_tensorflow_site")
sys.path.insert(0, SITE)

from optkit_block_tf import BLOCKED, install  # noqa: E402  (lives in SITE, shared with sitecustomize)


def pytest_configure(config):
    loaded = sorted(m for m in BLOCKED if m in sys.modules)
    if loaded:
        raise RuntimeError(f"the unit tier must start without TensorFlow, but {', '.join(loaded)} is imported")
    install()
    os.environ["OPTKIT_BLOCK_TF"] = "1"
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (SITE, os.environ.get("PYTHONPATH")) if p)
    config.addinivalue_line("markers", "unit: needs no TensorFlow (make test-unit runs it with TF unimportable)")


def pytest_report_header(config):
    return f"unit tier: imports of {', '.join(sorted(BLOCKED))} are blocked (here and in subprocesses)"
