"""The CLI skeleton: cheap to start (no TensorFlow), one-line errors, documented exit codes."""
import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from optkit import __version__
from optkit.cli import cli

pytestmark = pytest.mark.unit   # needs no TensorFlow: `make test-unit` runs it with TF unimportable


def _run(*args, **kw):
    return subprocess.run([sys.executable, "-m", "optkit.cli", *args], capture_output=True, text=True, **kw)


def test_importing_the_cli_imports_no_tensorflow():
    code = "import sys, optkit, optkit.cli, optkit.steps, optkit.records; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_help_lists_every_command_without_importing_tensorflow():
    code = ("import sys; from optkit.cli import main\n"
            "try: main(['--help'])\n"
            "except SystemExit: pass\n"
            "print('TF' if 'tensorflow' in sys.modules else 'noTF')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    for name in ("zoo", "inspect", "export", "bench", "gate", "report", "optimize"):
        assert name in out.stdout
    assert out.stdout.strip().endswith("noTF")


def test_version_prints_the_package_version():
    # Speed comes from importing no TensorFlow (tested above), not from a wall-clock bound,
    # which a loaded machine would break.
    out = _run("--version")
    assert out.returncode == 0 and __version__ in out.stdout


def test_unknown_command_suggests_the_close_one():
    result = CliRunner().invoke(cli, ["inspekt"])
    assert result.exit_code == 2
    assert "did you mean 'inspect'" in result.output


def test_bad_model_file_is_one_line_exit_2_without_traceback(tmp_path):
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a model")
    out = _run("inspect", str(bad))
    assert out.returncode == 2
    lines = [l for l in out.stderr.splitlines() if l.strip()]
    assert lines == [f"optkit: error: {bad}: not a Keras model (expected a .keras zip, an .h5 file or a SavedModel directory)"]
    assert "Traceback" not in out.stderr
