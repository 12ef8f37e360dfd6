"""Closed boundaries, read from the source with `ast` (no imports, no TensorFlow):
Keras-flavour knowledge only in keras_io, rendering only in report.py, no reaching into
another module's private names."""
import ast
import os

import pytest

pytestmark = pytest.mark.unit   # needs no TensorFlow: `make test-unit` runs it with TF unimportable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Private helper modules that serve their own package.
PACKAGE_PRIVATE = {"exporters._common", "exporters._graph", "exporters._sparse", "optkit.steps._rewrite_eval"}


def _sources():
    for package in ("optkit", "exporters"):
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in sorted(files):
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    rel = os.path.relpath(path, ROOT)
                    with open(path, encoding="utf-8") as fh:
                        yield rel, ast.parse(fh.read(), rel)


def test_only_keras_io_looks_at_keras_module_names():
    offenders = []
    for rel, tree in _sources():
        if rel == os.path.join("optkit", "keras_io.py"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "__module__":
                offenders.append(f"{rel}:{node.lineno} reads __module__")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                offenders += [f"{rel}:{node.lineno} imports {n}" for n in names if n.startswith("keras.src")]
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                    node.value.startswith(("keras.src", "tf_keras.src", "tensorflow_model_optimization.")):
                offenders.append(f"{rel}:{node.lineno} names {node.value!r}")
    assert offenders == []


def test_only_report_renders_html():
    offenders = [f"{rel}:{node.lineno}" for rel, tree in _sources() if rel != os.path.join("optkit", "report.py")
                 for node in ast.walk(tree)
                 if isinstance(node, ast.Constant) and isinstance(node.value, str)
                 and any(tag in node.value for tag in ("</body>", "<section", "<table", "<html"))]
    assert offenders == []


def test_no_module_uses_another_modules_private_names():
    offenders = []
    for rel, tree in _sources():
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("optkit", "exporters"):
                for a in node.names:
                    full = f"{node.module}.{a.name}"
                    if a.name.startswith("_") and not a.name.startswith("__") and full not in PACKAGE_PRIVATE:
                        offenders.append(f"{rel}:{node.lineno} imports {full}")
                    aliases[a.asname or a.name] = full
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] in ("optkit", "exporters"):
                        aliases[a.asname or a.name] = a.name
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases \
                    and node.attr.startswith("_") and not node.attr.startswith("__"):
                offenders.append(f"{rel}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    assert offenders == []
