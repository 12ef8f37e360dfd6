"""`optkit bench --remote` end to end against the real loopback sshd of test_remote, and the
device options' argument checks (`--adb` needs a device, so only its refusals run here)."""
import json
import os

import pytest
from click.testing import CliRunner

from optkit.cli import cli
from optkit.errors import UserError
from test_remote import VENV_PYTHON, sshd  # noqa: F401  (module fixture: a real sshd on 127.0.0.1)
from tiny_onnx import tiny_onnx

pytestmark = pytest.mark.unit   # needs no TensorFlow: `make test-unit` runs it with TF unimportable


def test_bench_remote_prints_the_remote_runners_results(sshd, tmp_path):
    model = tiny_onnx(tmp_path / "remote_model.onnx")
    res = CliRunner().invoke(cli, [
        "bench", str(model), "--remote", sshd["target"], "--ssh-identity", sshd["identity"],
        "--known-hosts", sshd["known_hosts"], "--remote-python", VENV_PYTHON,
        "--threads", "1", "--warmup", "2", "--min-time", "0.05", "--min-runs", "10", "--json"],
        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    (result,) = doc["results"]
    assert result["path"] == str(model) and result["runtime"] == "onnxruntime"
    assert result["threads"] == 1 and result["latency_ms"]["n"] >= 10
    assert len(result["samples_ms"]) == result["latency_ms"]["n"]
    assert result["remote"]  # where it ran is recorded


@pytest.mark.parametrize("args, message", [
    (["--remote", "u@h", "--adb", "X"], "exclusive"),
    (["--benchmark-binary", __file__], "only applies with --adb"),
    (["--adb", "emulator-5554"], "needs --benchmark-binary"),
    (["--known-hosts", __file__], "only apply with --remote"),
    (["--remote", "u@h", "--data", "synthetic:shapes"], "run locally only"),
])
def test_device_options_are_checked_before_connecting(tmp_path, args, message):
    model = tiny_onnx(tmp_path / "m.onnx")
    res = CliRunner().invoke(cli, ["bench", str(model), *args])
    assert isinstance(res.exception, UserError) and message in str(res.exception)
