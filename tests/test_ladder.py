"""The Lesson 14 ladder as a recipe: its rungs are plan variants, run by optimize's Pipeline;
the keep-only-what-helps decision; the comparison of rungs after the run."""
import json

import pytest
from click.testing import CliRunner

from optkit import ladder
from optkit import plan as plan_mod
from optkit.cli import cli
from optkit.records import Variant

NAMES = ["Naive", "Pooling", "Separable", "Separable+JIT", "Separable+JIT+AMP", "Separable+JIT+AMP+Fusing", "Tuned"]


@pytest.mark.unit
def test_decide_keeps_only_settings_clearly_faster_than_float32():
    from optkit.steps import speed

    verdict = speed.decide({"float32": 10.0, "jit": 8.0, "amp": 30.0, "fusing": 10.5})
    assert verdict["kept"] == ["jit"]
    assert verdict["ratios"] == {"jit": 0.8, "amp": 3.0, "fusing": 1.05}
    assert verdict["why"]["jit"].startswith("kept: 1.25× faster")
    assert verdict["why"]["amp"] == "dropped: 3.00× slower per training step than float32"
    assert "within noise" in verdict["why"]["fusing"]


@pytest.mark.unit
def test_every_rung_is_a_plan_variant_with_a_content_hash_id():
    plan = plan_mod.resolve(recipe="lesson14", data="synthetic:shapes", epochs=2)
    assert plan.mode == "ladder" and [v.name for v in plan.variants] == NAMES
    assert len({v.id for v in plan.variants}) == len(NAMES)
    v = {x.name: x for x in plan.variants}
    assert v["Pooling"].parent == v["Naive"].id and v["Separable"].parent == v["Pooling"].id
    # Speed rungs start from Separable's freshly rewritten weights, add their setting, then train.
    for name in NAMES[3:]:
        spec = v[name]
        assert spec.parent == v["Pooling"].id
        assert spec.steps[0].name == "separable" and spec.steps[0].options["epochs"] == 0
        assert spec.steps[-1].name == "train" and spec.steps[-1].epochs == 2
    assert [s.name for s in v["Separable+JIT+AMP+Fusing"].steps] == ["separable", "jit", "amp", "fusing", "train"]
    assert v["Separable+JIT+AMP"].steps[2].options["policy"] == "mixed"
    assert [s.name for s in v["Tuned"].steps] == ["separable", "tune", "train"]
    # Exports: Naive and the last rewrite rung; the speed rungs change training, not the graph shipped.
    assert [e.label for e in v["Naive"].exports] == ["tflite:int8", "onnx"]
    assert [e.label for e in v["Separable"].exports] == ["tflite:int8", "onnx"]
    assert all(not v[n].exports for n in NAMES if n not in ("Naive", "Separable"))
    # A changed option is a new id; the same plan gives the same ids.
    assert plan_mod.resolve(recipe="lesson14", data="synthetic:shapes", epochs=3).variants[3].id != v[NAMES[3]].id
    assert [x.id for x in plan_mod.resolve(recipe="lesson14", data="synthetic:shapes", epochs=2).variants] == \
        [x.id for x in plan.variants]


@pytest.mark.unit
def test_a_several_step_variant_has_the_id_of_the_same_steps_as_a_chain():
    plan = plan_mod.resolve(recipe="lesson14", data="synthetic:shapes")
    jit = plan.variants[3]
    chained = plan.variants[1]
    for step in jit.steps:
        chained = plan_mod.child(chained, step)
    assert chained.id == jit.id


@pytest.mark.unit
def test_tiny_schedule_probes_briefly_and_skips_the_onednn_processes():
    plan = plan_mod.resolve(recipe="lesson14", data="synthetic:shapes", tiny=True)
    tune = plan.variants[-1].steps[1]
    assert tune.name == "tune" and tune.options == {"probe_steps": 4, "onednn": False}


@pytest.mark.unit
def test_dry_run_json_lists_every_rung_and_replays(tmp_path):
    result = CliRunner().invoke(cli, ["optimize", "--recipe", "lesson14", "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert [v["name"] for v in doc["variants"]] == NAMES
    path = tmp_path / "plan.json"
    path.write_text(result.output)
    replayed = plan_mod.load(str(path))           # ids check out against parents and steps
    assert [v.id for v in replayed.variants] == [v["id"] for v in doc["variants"]]


@pytest.mark.unit
def test_the_ladder_on_a_users_model_needs_data(tmp_path):
    model = tmp_path / "m.keras"
    model.write_bytes(b"not read before the plan is checked")
    with pytest.raises(Exception, match="needs --data"):
        plan_mod.resolve(model=str(model), recipe="lesson14")


def _record(name, *, train=1.0, infer=1.0, params=100, accuracy=0.5, steps=(), status="ok", size=1000):
    return Variant(id=name, name=name, parent=None, steps=list(steps), params=params, accuracy=accuracy,
                   train_time_per_epoch_s=train, inference_ms_per_step=infer, status=status,
                   details={"size_bytes": size})


@pytest.mark.unit
def test_annotate_marks_slower_speed_rungs_and_says_what_the_probe_kept():
    probe = {"ms_per_step": {"float32": 10.0, "jit": 8.0, "amp": 30.0, "fusing": 10.5}, "steps": 4,
             "amp_policy": "mixed_bfloat16", "fusing_steps": 4, "kept": ["jit"],
             "ratios": {}, "why": {"jit": "kept: 1.25× faster", "amp": "dropped: 3.00× slower", "fusing": "dropped"}}
    records = [_record("Naive", params=200, accuracy=0.4, size=2000), _record("Pooling", status="skipped"),
               _record("Separable", train=2.0, infer=1.0),
               _record("Separable+JIT", train=1.9, infer=0.9),
               _record("Separable+JIT+AMP", train=6.0, infer=3.0),
               _record("Separable+JIT+AMP+Fusing", train=2.0, infer=1.05),
               _record("Tuned (JIT)", train=1.5, infer=1.0,
                       steps=[{"name": "tune", "info": {"kept": ["jit"], "speed_probe": probe, "onednn_probe": None}}])]
    records[1].reason = "step pooling: no Flatten -> Dense head"
    section = ladder.annotate(records)
    d = {r.name: r.details for r in records}
    assert "slower_than_separable" not in d["Separable+JIT"]
    assert d["Separable+JIT+AMP"]["slower_than_separable"] == \
        "training 3.00× slower, inference 3.00× slower than Separable on this machine"
    assert d["Tuned (JIT)"]["train_time_vs_separable"] == pytest.approx(0.75)
    assert "train_time_vs_separable" not in d["Naive"]
    assert section["ratios_to_naive"]["Separable"] == {"params": 0.5, "accuracy_points": pytest.approx(10.0),
                                                       "train_time_per_epoch": 2.0, "inference_ms_per_step": 1.0,
                                                       "size": 0.5}
    assert "Pooling" not in section["ratios_to_naive"]
    notes = section["notes"]
    assert any(n.startswith("Pooling rung skipped: step pooling") for n in notes)
    assert any(n.startswith("amp probe (30.0 vs 10.0 ms/step float32)") for n in notes)
    assert notes[-1] == "kept: jit"
    assert section["speed_probe"] is probe


@pytest.mark.unit
def test_annotate_calls_a_tuned_rung_that_kept_nothing_a_repeat_of_separable():
    records = [_record("Naive"), _record("Separable", train=2.0),
               _record("Tuned (no speed setting helped)", train=2.5, steps=[
                   {"name": "tune", "info": {"kept": [], "speed_probe": None, "onednn_probe": None}}])]
    notes = ladder.annotate(records)["notes"]
    tuned = records[-1].details
    assert tuned["repeat_of_separable"] and "slower_than_separable" not in tuned
    assert any("repeats Separable's settings: its 1.25× train time" in n for n in notes)
    assert notes[-1] == "kept: none of jit/amp/fusing"


def _user_model(tmp_path, head):
    from optkit import keras_io

    keras = keras_io.keras3()
    L = keras.layers
    keras.utils.set_random_seed(0)
    body = [keras.Input((16, 16, 3)), L.Conv2D(8, 3, activation="relu"), L.Conv2D(8, 3, activation="relu")]
    tail = [L.MaxPooling2D(), L.Flatten()] if head == "flatten" else [L.GlobalAveragePooling2D()]
    model = keras.Sequential(body + tail + [L.Dense(4, activation="softmax")])
    path = tmp_path / f"{head}.keras"
    model.save(str(path))
    return path, model.count_params()


@pytest.mark.slow
def test_the_ladder_runs_through_the_pipeline_on_a_users_model(tmp_path):
    path, params = _user_model(tmp_path, "flatten")
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["optimize", str(path), "--recipe", "lesson14", "--data",
                                      "synthetic:shapes?classes=4&n=400", "--epochs", "2", "--batch-size", "16",
                                      "--to", "tflite", "-o", str(out), "--json", "--tiny"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    names = [v["name"] for v in report["variants"]]
    assert names[:6] == NAMES[:6] and names[6].startswith("Tuned (")
    v = {x["name"]: x for x in report["variants"]}
    plan = json.loads((out / "plan.json").read_text())
    assert [x["id"] for x in report["variants"]] == [x["id"] for x in plan["variants"]]
    assert v["Naive"]["params"] == params
    assert v["Separable"]["params"] < v["Pooling"]["params"] < v["Naive"]["params"]
    assert {x["params"] for x in report["variants"][2:]} == {v["Separable"]["params"]}
    for rung in report["variants"]:
        assert rung["status"] == "ok", rung
        assert rung["train_time_per_epoch_s"] > 0 and rung["inference_ms_per_step"] > 0
        assert 0 <= rung["accuracy"] <= 1 and rung["details"]["size_bytes"] > 0
        assert rung["details"]["training" if rung["name"] == "Naive" else "inference"]
    jit = v["Separable+JIT"]
    assert jit["details"]["inference"]["path"].endswith("jit_compile=True)")
    assert jit["steps"][-1]["info"]["training"]["settings"]["jit_compile"] is True
    assert [a["format"] for a in v["Separable"]["artifacts"]] == ["tflite"]
    assert v["Separable"]["artifacts"][0]["status"] == "ok" and not jit["artifacts"]
    ladder_section = report["ladder"]
    probe = ladder_section["speed_probe"]
    assert set(probe["ms_per_step"]) == {"float32", "jit", "amp", "fusing"}
    tuned = v[names[6]]
    assert next(s for s in tuned["steps"] if s["name"] == "tune")["info"]["kept"] == probe["kept"]
    assert report["notes"][-1].startswith("kept:")
    assert ladder_section["ratios_to_naive"]["Naive"]["params"] == 1.0
    for rung in report["variants"][3:]:
        d = rung["details"]
        if d.get("repeat_of_separable"):
            assert not probe["kept"] and rung is report["variants"][-1]
            continue
        slower = d["train_time_vs_separable"] > 1 / ladder.KEEP_MARGIN or d["inference_vs_separable"] > 1 / ladder.KEEP_MARGIN
        assert ("slower_than_separable" in d) == slower


@pytest.mark.slow
def test_a_rung_the_model_does_not_allow_is_skipped_and_the_next_builds_on_the_one_below(tmp_path):
    path, params = _user_model(tmp_path, "gap")
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["optimize", str(path), "--recipe", "lesson14", "--data",
                                      "synthetic:shapes?classes=4&n=300", "--epochs", "1", "--to", "tflite",
                                      "-o", str(out), "--tiny"], catch_exceptions=False)
    assert result.exit_code == 0, result.output        # skipped is not failed
    report = json.loads((out / "report.json").read_text())
    v = {x["name"]: x for x in report["variants"]}
    assert v["Pooling"]["status"] == "skipped" and "no Flatten -> Dense head" in v["Pooling"]["reason"]
    assert v["Separable"]["status"] == "ok" and v["Separable"]["params"] < params
    assert any(n.startswith("Pooling rung skipped") for n in report["notes"])
    assert "skipped" in result.stdout


@pytest.mark.unit
def test_the_ladder_runs_under_a_strategy_like_any_chain():
    plain = plan_mod.resolve(recipe="lesson14", data="synthetic:shapes")
    mirrored = plan_mod.resolve(recipe="lesson14", data="synthetic:shapes", strategy="mirrored")
    assert mirrored.strategy == "mirrored" and mirrored.mode == "ladder"
    # The strategy decides where the rungs train, not what they are: same variants, same ids.
    assert [v.id for v in mirrored.variants] == [v.id for v in plain.variants]
