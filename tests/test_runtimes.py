"""The runtime registry (optkit.runtimes): one file per runtime, bench and the CLI derive from it."""
import sys
import textwrap

import numpy as np
import pytest

from optkit import bench, runtimes
from optkit.errors import UserError

pytestmark = pytest.mark.unit   # needs no TensorFlow: `make test-unit` runs it with TF unimportable


def test_every_runtime_including_the_load_only_ones_is_registered():
    names = runtimes.names()
    assert names[:2] == ["litert", "onnxruntime"]                        # TF-free ones first
    assert {"keras", "keras-predict", "tf-xla", "tensorrt", "coreml"} <= set(names)
    assert runtimes.get("xla").name == "tf-xla" and runtimes.get(" ORT ").name == "onnxruntime"
    assert runtimes.default_for("tflite").name == "litert" and runtimes.default_for("h5").name == "keras"
    assert runtimes.default_for("pb") is None
    assert [r.name for r in runtimes.registry().values() if r.needs_tensorflow] == ["keras", "keras-predict", "tf-xla"]


def test_unknown_runtime_is_a_user_error_with_did_you_mean():
    with pytest.raises(UserError, match=r"unknown runtime 'onnxrt' \(did you mean 'onnxruntime'\?\)"):
        runtimes.get("onnxrt")


def test_bench_and_the_cli_help_derive_from_the_registry():
    assert bench.runtimes_for("m.keras", ["keras", "xla", "predict"]) == ["keras", "tf-xla", "keras-predict"]
    from optkit.commands.bench import bench_cmd

    help_text = next(p.help for p in bench_cmd.params if p.name == "runtimes")
    assert all(name in help_text for name in runtimes.names())


def test_a_new_runtime_is_one_file(tmp_path, monkeypatch):
    """Drop a module declaring RUNTIME into the package: bench runs its format, nothing else edited."""
    (tmp_path / "echo_runtime.py").write_text(textwrap.dedent('''
        import numpy as np
        from optkit import runner
        from optkit.runtimes import Runtime

        class Echo(runner.Predictor):
            runtime = "echo"
            def __init__(self, path, threads):
                runner.Predictor.__init__(self, path, threads)
                self.inputs = [runner.TensorSpec("x", [None, 3], "float32")]
                self.outputs = [runner.TensorSpec("y", [None, 3], "float32")]
            def __call__(self, *arrays):
                return [np.asarray(arrays[0], np.float32) * 2]

        RUNTIME = Runtime("echo", ("npy",), lambda path, threads=None: Echo(path, threads or 1),
                          "doubles its input (a test runtime)", default_for=("npy",))
    '''))
    monkeypatch.setattr(runtimes, "__path__", list(runtimes.__path__) + [str(tmp_path)])
    monkeypatch.delitem(sys.modules, "optkit.runtimes.echo_runtime", raising=False)
    artifact = tmp_path / "model.npy"
    np.save(artifact, np.zeros(3))
    assert "echo" in runtimes.help_text() and bench.runtimes_for(str(artifact)) == ["echo"]
    doc = bench.bench([str(artifact)], threads=1, warmup=0, min_time=0.0, min_runs=3)
    [row] = doc["results"]
    assert row["runtime"] == "echo" and row["status"] == "ok" and row["latency_ms"]["n"] >= 3
    sys.modules.pop("optkit.runtimes.echo_runtime", None)
