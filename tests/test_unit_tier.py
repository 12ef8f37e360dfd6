"""The unit tier (`make test-unit`): TensorFlow really is unimportable there, in subprocesses too."""
import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit   # needs no TensorFlow: `make test-unit` runs it with TF unimportable

HERE = os.path.dirname(os.path.abspath(__file__))
SITE = os.path.join(HERE, "no_tensorflow_site")


def _blocked_python(code):
    env = dict(os.environ, OPTKIT_BLOCK_TF="1",
               PYTHONPATH=os.pathsep.join(p for p in (SITE, os.environ.get("PYTHONPATH")) if p))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.parametrize("module", ["tensorflow", "tf_keras", "keras", "tensorflow_model_optimization", "tf2onnx"])
def test_tensorflow_and_its_dependants_cannot_be_imported_in_a_blocked_subprocess(module):
    proc = _blocked_python(f"import {module}")
    assert proc.returncode != 0
    assert f"'{module}' is blocked in the unit tier" in proc.stderr


def test_optkit_and_its_cli_still_import_when_tensorflow_is_blocked():
    proc = _blocked_python("import optkit, optkit.cli, optkit.plan, optkit.ladder, optkit.steps, exporters;"
                           "from optkit import steps; print(len(steps.registry()))")
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) >= 10


def test_make_test_unit_runs_the_unit_marker_with_the_blocking_plugin():
    with open(os.path.join(os.path.dirname(HERE), "Makefile")) as fh:
        text = fh.read()
    recipe = re.search(r"^test-unit:.*\n\t(.*)$", text, re.M).group(1)
    assert "-p tests.no_tensorflow" in recipe and '-m "unit and not slow"' in recipe
