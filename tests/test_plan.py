"""Plan resolution, variant ids, plan.json replay, recipes (built-in and TOML) and --dry-run.

None of these needs TensorFlow: a plan is decided before anything is trained.
"""
import json
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

from optkit import plan as plan_mod
from optkit import recipes
from optkit.cli import cli
from optkit.errors import UserError

pytestmark = pytest.mark.unit   # needs no TensorFlow: `make test-unit` runs it with TF unimportable


def _steps_available(*names):
    from optkit import steps

    known = steps.registry()
    return all(n in known for n in names)


needs_compression_steps = pytest.mark.skipif(
    not _steps_available("pooling", "prune", "cluster", "qat"),
    reason="the pooling/prune/cluster/qat steps have not landed in this build")


def test_embedded_default_is_the_lesson14_ladder_on_synthetic_shapes():
    plan = plan_mod.resolve()
    assert plan.model == "zoo:lesson14"
    assert plan.data == "synthetic:shapes?classes=6"
    assert plan.mode == "ladder" and plan.recipe == "lesson14"
    assert plan.train_baseline
    assert [e.label for e in plan.baseline.exports] == ["tflite:int8", "onnx"]
    assert plan.data_limit == plan_mod.DEFAULT_DATA_LIMIT


def test_tiny_schedule_shrinks_epochs_and_data(monkeypatch):
    monkeypatch.setenv("OPTKIT_TINY", "1")
    plan = plan_mod.resolve()
    assert plan.tiny and plan.epochs == 1 and plan.data_limit == plan_mod.TINY["data_limit"]


def test_baseline_id_is_stable_and_depends_on_training_choices():
    a = plan_mod.resolve(seed=0).baseline.id
    assert plan_mod.resolve(seed=0).baseline.id == a
    assert plan_mod.resolve(seed=1).baseline.id != a
    assert plan_mod.resolve(epochs=7).baseline.id != a


def test_user_model_id_is_the_file_content_not_its_name(tmp_path):
    one, two = tmp_path / "a.keras", tmp_path / "b.keras"
    one.write_bytes(b"same bytes")
    two.write_bytes(b"same bytes")
    assert plan_mod.resolve(model=str(one)).baseline.id == plan_mod.resolve(model=str(two)).baseline.id
    two.write_bytes(b"other bytes")
    assert plan_mod.resolve(model=str(one)).baseline.id != plan_mod.resolve(model=str(two)).baseline.id


def test_user_model_without_steps_exports_in_the_usual_precisions(tmp_path):
    model = tmp_path / "m.keras"
    model.write_bytes(b"x")
    plan = plan_mod.resolve(model=str(model))
    assert plan.mode == "chain" and len(plan.variants) == 1 and not plan.train_baseline
    assert [e.label for e in plan.baseline.exports] == list(plan_mod.DEFAULT_EXPORTS)


def test_to_option_parses_format_and_quantization(tmp_path):
    model = tmp_path / "m.keras"
    model.write_bytes(b"x")
    plan = plan_mod.resolve(model=str(model), to="tflite:int8, onnx")
    assert [(e.format, e.quantize) for e in plan.baseline.exports] == [("tflite", "int8"), ("onnx", "none")]


@pytest.mark.parametrize("kwargs, message", [
    (dict(recipe="edge-int8", steps=["prune"]), "either --recipe or --step"),
    (dict(recipe="lesson14", max_accuracy_drop=1.0), "does not apply to the lesson14 ladder"),
    (dict(trials=3), "--budget/--trials limit a search"),
    (dict(max_accuracy_drop=1.0, budget=1.0, trials=2), "either --budget or --trials"),
    (dict(max_accuracy_drop=-1.0), ">= 0"),
    (dict(epochs=0), "--epochs must be at least 1"),
    (dict(model="/no/such/model.keras"), "model not found"),
    (dict(recipe="edge-int9"), "did you mean 'edge-int8'"),
])
def test_contradictory_choices_are_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        plan_mod.resolve(**kwargs)


def test_search_needs_labelled_data(tmp_path):
    model = tmp_path / "m.keras"
    model.write_bytes(b"x")
    with pytest.raises(UserError, match="needs labelled data"):
        plan_mod.resolve(model=str(model), max_accuracy_drop=1.0)


def test_search_plan_defaults_to_a_ten_minute_budget():
    plan = plan_mod.resolve(max_accuracy_drop=2.0, data="synthetic:shapes")
    assert plan.mode == "search"
    assert plan.search.max_accuracy_drop == 2.0 and plan.search.budget_minutes == 10.0
    assert plan.search.objective == "size"


def test_fast_cpu_recipe_searches_for_latency_with_a_default_goal():
    plan = plan_mod.resolve(recipe="fast-cpu", data="synthetic:shapes", trials=4)
    assert plan.mode == "search" and plan.search.objective == "latency"
    assert plan.search.max_accuracy_drop == 1.0 and plan.search.trials == 4


def test_plan_json_round_trips_to_the_same_plan(tmp_path):
    plan = plan_mod.resolve(seed=3, strategy="mirrored")
    path = tmp_path / "plan.json"
    plan_mod.write(plan, str(path))
    again = plan_mod.load(str(path))
    assert again == plan
    assert not list(tmp_path.glob("*.tmp-*")), "the atomic write left its temp file"


def test_plan_with_an_edited_id_is_refused(tmp_path):
    plan = plan_mod.resolve()
    parent = plan.baseline
    step = plan_mod.PlanStep("prune", {"sparsity": 0.5}, epochs=1)
    plan.variants.append(plan_mod.child(parent, step))
    path = tmp_path / "plan.json"
    plan_mod.write(plan, str(path))
    assert plan_mod.load(str(path)).variants[1].id == plan.variants[1].id
    doc = json.loads(path.read_text())
    doc["variants"][1]["steps"][0]["options"]["sparsity"] = 0.9     # options edited, id kept
    path.write_text(json.dumps(doc))
    with pytest.raises(UserError, match="does not match its step and options"):
        plan_mod.load(str(path))


def test_child_ids_hash_parent_step_and_options():
    base = plan_mod.resolve().baseline
    half = plan_mod.child(base, plan_mod.PlanStep("prune", {"sparsity": 0.5}, epochs=1))
    assert half.id == plan_mod.child(base, plan_mod.PlanStep("prune", {"sparsity": 0.5}, epochs=1)).id
    assert half.id != plan_mod.child(base, plan_mod.PlanStep("prune", {"sparsity": 0.75}, epochs=1)).id
    assert half.id != plan_mod.child(base, plan_mod.PlanStep("prune", {"sparsity": 0.5}, epochs=2)).id
    assert plan_mod.child(half, plan_mod.PlanStep("qat", {}, epochs=1)).parent == half.id


def test_replaying_a_plan_whose_model_changed_is_refused(tmp_path):
    model = tmp_path / "m.keras"
    model.write_bytes(b"v1")
    path = tmp_path / "plan.json"
    plan_mod.write(plan_mod.resolve(model=str(model)), str(path))
    model.write_bytes(b"v2")
    with pytest.raises(UserError, match="changed since the plan was written"):
        plan_mod.load(str(path))


def test_not_a_plan_is_a_user_error(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text('{"hello": 1}')
    with pytest.raises(UserError, match="not an optkit plan"):
        plan_mod.load(str(path))


def test_builtin_recipes_are_listed_with_their_modes():
    assert set(recipes.names()) == {"lesson14", "edge-int8", "max-compression", "fast-cpu"}
    assert recipes.get("edge-int8").steps == ("pooling", "prune:sparsity=0.5", "qat")
    assert recipes.get("max-compression").steps[-1] == "qat"
    assert recipes.get("lesson14").mode == "ladder"


def test_toml_recipe_becomes_step_specs(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(textwrap.dedent("""
        description = "prune hard"
        to = ["tflite:int8"]
        epochs = 4
        [[step]]
        name = "prune"
        sparsity = 0.8
        [[step]]
        name = "qat"
    """))
    rec = recipes.get(str(path))
    assert rec.name == "mine" and rec.mode == "chain"
    assert rec.steps == ("prune:sparsity=0.8", "qat")
    assert rec.to == ("tflite:int8",) and rec.defaults == {"epochs": 4}


@pytest.mark.parametrize("text, message", [
    ("mode = 'sideways'", "mode must be one of"),
    ("colour = 'red'\n[[step]]\nname='prune'", "unknown key"),
    ("[[step]]\nsparsity = 0.5", "needs a 'name'"),
    ("description = 'nothing'", "at least one"),
    ("this is not toml", "not valid TOML"),
])
def test_bad_toml_recipes_are_user_errors(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        recipes.get(str(path))


@needs_compression_steps
def test_edge_int8_recipe_is_a_chain_of_three_variants_with_resolved_options():
    plan = plan_mod.resolve(recipe="edge-int8", data="synthetic:shapes", epochs=2)
    names = [v.name for v in plan.variants]
    assert names == ["baseline", "pooling", "pooling+prune", "pooling+prune+qat"]
    prune = plan.variants[2].step
    assert prune.options["sparsity"] == 0.5 and prune.epochs == 2
    assert [v.parent for v in plan.variants[1:]] == [v.id for v in plan.variants[:-1]]


@needs_compression_steps
def test_unknown_step_option_is_rejected_before_anything_runs():
    with pytest.raises(UserError, match="has no option"):
        plan_mod.resolve(steps=["prune:spartsity=0.5"], data="synthetic:shapes")


def test_dry_run_prints_the_plan_as_json():
    result = CliRunner().invoke(cli, ["optimize", "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["mode"] == "ladder" and doc["model"] == "zoo:lesson14"
    assert doc["variants"][0]["name"] == "Naive"


def test_dry_run_readable_output_names_the_ladder_and_exports():
    result = CliRunner().invoke(cli, ["optimize", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "Naive -> Pooling -> Separable" in result.output
    assert "tflite:int8, onnx" in result.output


def test_dry_run_replays_a_plan_file_and_rejects_extra_choices(tmp_path):
    path = tmp_path / "plan.json"
    plan_mod.write(plan_mod.resolve(seed=5), str(path))
    result = CliRunner().invoke(cli, ["optimize", "--plan", str(path), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["seed"] == 5
    result = CliRunner().invoke(cli, ["optimize", "--plan", str(path), "--seed", "2", "--dry-run"])
    assert result.exit_code != 0
    assert "--plan replays a plan as written; drop --seed" in str(result.exception or result.output)


def test_dry_run_user_error_exits_2_with_one_line():
    proc = subprocess.run([sys.executable, "-m", "optkit.cli", "optimize", "--recipe", "nope", "--dry-run"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("optkit: error: unknown recipe 'nope'")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_dry_run_imports_no_tensorflow():
    code = textwrap.dedent("""
        import sys
        from click.testing import CliRunner
        from optkit.cli import cli
        for args in (["optimize", "--dry-run"], ["optimize", "--dry-run", "--json", "--recipe", "fast-cpu",
                     "--data", "synthetic:shapes", "--trials", "2"]):
            r = CliRunner().invoke(cli, args)
            assert r.exit_code == 0, r.output
        heavy = sorted(m for m in ("tensorflow", "keras", "tf_keras", "tensorflow_model_optimization")
                       if m in sys.modules)
        print("HEAVY:" + ",".join(heavy))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY:\n" in proc.stdout + "\n" and proc.stdout.strip() == "HEAVY:"


def test_no_model_with_data_runs_the_ladder_on_that_data():
    plan = plan_mod.resolve(data="synthetic:shapes?classes=4")
    assert plan.mode == "ladder" and plan.model == "zoo:lesson14" and plan.data == "synthetic:shapes?classes=4"


@needs_compression_steps
def test_a_toml_recipe_resolves_like_a_builtin_one(tmp_path):
    path = tmp_path / "hard.toml"
    path.write_text('to = ["tflite:int8"]\nepochs = 2\n[[step]]\nname = "prune"\nsparsity = 0.8\n'
                    '[[step]]\nname = "cluster"\nclusters = 8\n')
    plan = plan_mod.resolve(recipe=str(path), data="synthetic:shapes")
    assert plan.recipe == "hard" and plan.epochs == 2
    assert [(v.step.name, v.step.options.get("sparsity"), v.step.options.get("clusters"))
            for v in plan.variants[1:]] == [("prune", 0.8, None), ("cluster", None, 8)]
    assert [e.label for e in plan.variants[-1].exports] == ["tflite:int8"]


@pytest.mark.parametrize("spec, message", [
    ("cpu:onednn=maybe", "step 'cpu': onednn must be one of auto, on, off, got 'maybe'"),
    ("fusing:steps=0", "step 'fusing': steps must be a positive integer, got 0"),
    ("prune:sparsity=1.5", "step 'prune': sparsity must be in [0, 1), got 1.5"),
])
def test_a_bad_step_option_fails_the_dry_run_with_exit_2_and_no_tensorflow(spec, message):
    code = textwrap.dedent(f"""
        import sys
        from optkit.cli import main
        try:
            main(["optimize", "zoo:lenet5", "--data", "synthetic:shapes", "--step", "{spec}", "--dry-run"])
        except SystemExit as exc:
            print("EXIT", exc.code, "TF", "tensorflow" in sys.modules)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "EXIT 2 TF False", proc.stdout + proc.stderr
    assert proc.stderr.strip() == f"optkit: error: {message}"


def test_the_ladder_gives_naive_a_longer_epoch_cap_unless_epochs_are_given():
    from optkit import ladder

    plan = plan_mod.resolve()
    assert plan.baseline_epochs == ladder.NAIVE_EPOCHS > plan.epochs
    assert "10 for the baseline" in plan.describe() and "early stopping" in plan.describe()
    assert plan_mod.resolve(epochs=2).baseline_epochs is None
    assert plan_mod.resolve(tiny=True).baseline_epochs is None
    assert plan.baseline.id != plan_mod.resolve(epochs=plan.epochs).baseline.id   # a different training run
