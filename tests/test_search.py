"""Accuracy-aware search: the choice rules on hand-made points, then real searches on tiny data."""
import json

import pytest
from click.testing import CliRunner

from optkit import search
from optkit.cli import cli


def _p(label, gzip, ms, acc, base=0.9):
    return {"label": label, "gzip_bytes": gzip, "latency_ms": ms, "accuracy": acc,
            "accuracy_drop_points": search._drop(base, acc)}


@pytest.mark.unit
def test_pareto_keeps_exactly_the_undominated_points():
    small = _p("small", 100, 5.0, 0.80)
    fast = _p("fast", 900, 1.0, 0.85)
    accurate = _p("accurate", 1000, 4.0, 0.90)
    dominated = _p("dominated", 950, 4.5, 0.84)    # worse than `accurate` on all three
    assert {p["label"] for p in search.pareto([small, fast, accurate, dominated])} == {"small", "fast", "accurate"}


@pytest.mark.unit
def test_best_within_goal_is_the_smallest_for_size_and_the_fastest_for_latency():
    points = [_p("int8", 100, 3.0, 0.89), _p("float", 400, 1.0, 0.90), _p("tiny-bad", 50, 0.5, 0.70)]
    best, met = search.choose_best(points, max_drop=1.0, objective="size")
    assert met and best["label"] == "int8"
    best, met = search.choose_best(points, max_drop=1.0, objective="latency")
    assert met and best["label"] == "float"


@pytest.mark.unit
def test_when_nothing_meets_the_goal_the_closest_candidate_is_returned_as_unmet():
    points = [_p("a", 100, 3.0, 0.85), _p("b", 50, 1.0, 0.80)]
    best, met = search.choose_best(points, max_drop=1.0, objective="size")
    assert not met and best["label"] == "a"      # 5 points below beats 10 points below
    assert search.choose_best([], 1.0, "size") == (None, False)


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    from test_optimize import make_user_files   # the same tiny model and image folder

    return make_user_files(tmp_path_factory.mktemp("user"))


def _run(args):
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code in (0, 1), result.output
    return result, json.loads(result.stdout)


def test_search_returns_a_best_variant_and_the_pareto_set_within_its_trials(user_files, tmp_path):
    model, folder = user_files
    out = tmp_path / "run"
    result, report = _run(["optimize", str(model), "--data", str(folder), "--max-accuracy-drop", "5",
                           "--trials", "8", "-o", str(out), "--json", "--tiny"])
    s = report["search"]
    assert s["trials"] <= 8 and s["best"] is not None and s["pareto"]
    assert s["goal"] == {"max_accuracy_drop": 5.0, "objective": "size", "budget_minutes": None, "trials": 8}
    # The best is marked on its artifact, every Pareto point is marked, and they are real artifacts.
    marked = {(v["id"], a["format"], a["quantize"]): a for v in report["variants"] for a in v["artifacts"]}
    flagged = [a for a in marked.values() if a["details"].get("pareto")]
    assert len(flagged) == len(s["pareto"])
    best_art = [a for a in marked.values() if a["details"].get("best")]
    assert len(best_art) == 1 and best_art[0]["gzip_bytes"] == s["best"]["gzip_bytes"]
    if s["met"]:
        assert s["best"]["accuracy_drop_points"] <= 5.0
    # Six precisions of the baseline, then trained candidates (pooling, separable) as variants.
    assert len(report["variants"][0]["artifacts"]) == 6
    assert [v["name"] for v in report["variants"][1:]] == ["pooling", "separable"][:s["trials"] - 6]


def test_search_out_of_budget_still_returns_the_best_so_far(user_files, tmp_path):
    model, folder = user_files
    _, report = _run(["optimize", str(model), "--data", str(folder), "--max-accuracy-drop", "1",
                      "--budget", "0.01", "-o", str(tmp_path / "run"), "--json", "--tiny"])
    s = report["search"]
    assert s["stopped"] == "time budget 0.01 min reached"
    assert s["best"] is not None and s["best"]["variant"] == report["variants"][0]["id"]


def test_replaying_a_search_plan_tries_the_same_candidates(user_files, tmp_path):
    model, folder = user_files
    first = tmp_path / "first"
    _, one = _run(["optimize", str(model), "--data", str(folder), "--max-accuracy-drop", "50",
                   "--trials", "7", "-o", str(first), "--json", "--tiny"])
    _, two = _run(["optimize", "--plan", str(first / "plan.json"), "-o", str(tmp_path / "again"), "--json"])
    assert [v["id"] for v in two["variants"]] == [v["id"] for v in one["variants"]]
    assert [[(a["format"], a["quantize"]) for a in v["artifacts"]] for v in two["variants"]] == \
        [[(a["format"], a["quantize"]) for a in v["artifacts"]] for v in one["variants"]]
    assert two["search"]["replayed"] is True and two["search"]["best"] is not None


@pytest.mark.slow
def test_search_stacks_the_strongest_kept_pruning_and_clustering_with_qat(user_files, tmp_path):
    model, folder = user_files
    _, report = _run(["optimize", str(model), "--data", str(folder), "--max-accuracy-drop", "100",
                      "--trials", "30", "-o", str(tmp_path / "run"), "--json", "--tiny"])
    by_name = {v["name"]: v for v in report["variants"]}
    pqat = by_name["prune[sparsity=0.9]+qat"]
    assert pqat["parent"] == by_name["prune[sparsity=0.9]"]["id"]
    assert pqat["steps"][-1]["info"]["scheme"] == "pqat"
    assert by_name["cluster[clusters=8]+qat"]["steps"][-1]["info"]["scheme"] == "cqat"
    pcqat = by_name["prune[sparsity=0.9]+cluster[clusters=8]+qat"]
    assert pcqat["steps"][-1]["info"]["scheme"] == "pcqat"
    assert [a["format"] + ":" + a["quantize"] for a in pcqat["artifacts"]] == ["tflite:int8"]
    assert report["search"]["trials"] == 19 and report["search"]["stopped"] is None
