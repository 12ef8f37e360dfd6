"""The import blocker of the unit tier (tests/no_tensorflow.py); also installed in subprocesses
by the sitecustomize next to it when OPTKIT_BLOCK_TF=1."""
import importlib.abc
import sys

# TensorFlow and the packages that import it on import.
BLOCKED = frozenset({"tensorflow", "tf_keras", "keras", "tensorflow_model_optimization", "tf2onnx"})


class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"'{name}' is blocked in the unit tier (tests/no_tensorflow.py): "
                                      "this test needs TensorFlow, so it is not a unit test", name=name)
        return None


def install():
    if not any(isinstance(f, _Blocker) for f in sys.meta_path):
        sys.meta_path.insert(0, _Blocker())
