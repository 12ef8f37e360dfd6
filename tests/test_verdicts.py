"""optkit.verdicts: a step is kept only when it does not cost more than the tolerance on
validation; `selected` is the fastest artifact within the tolerance of the baseline."""
from optkit import verdicts


def test_a_step_losing_more_than_the_tolerance_is_rejected_with_its_numbers():
    verdict = verdicts.judge(0.567, 0.867)
    assert not verdict["kept"] and verdict["drop_points"] == 30.0
    assert "56.7%" in verdict["reason"] and "86.7%" in verdict["reason"] and "-30.0 points" in verdict["reason"]
    assert verdicts.judge(0.86, 0.867)["kept"]                 # 0.7 points: within 1
    assert not verdicts.judge(0.85, 0.867)["kept"]             # 1.7 points
    assert verdicts.judge(0.85, 0.867, tolerance_points=2)["kept"]
    assert verdicts.judge(None, 0.8)["kept"]                   # nothing to compare: kept, and says why


def _artifact(fmt, q, p50, size, acc, status="ok", parity_ok=True):
    return {"format": fmt, "quantize": q, "status": status, "size_bytes": size, "accuracy": acc,
            "latency_ms": {"p50": p50, "runtime": "litert"}, "parity": {"ok": parity_ok}, "path": f"/x/{fmt}"}


def test_selected_is_the_fastest_artifact_within_tolerance_and_size_breaks_ties():
    variants = [
        {"id": "a", "name": "baseline", "status": "ok",
         "artifacts": [_artifact("tflite", "none", 2.0, 400, 0.80), _artifact("onnx", "none", 1.0, 900, 0.80)]},
        {"id": "b", "name": "pruned", "status": "ok",
         "artifacts": [_artifact("tflite", "int8", 0.5, 100, 0.75),          # fastest, but 5 points worse
                       _artifact("onnx", "int8", 1.02, 300, 0.795)]},        # ties with baseline onnx, smaller
        {"id": "c", "name": "rejected", "status": "rejected",
         "artifacts": [_artifact("tflite", "int8", 0.1, 10, 0.80)]},
    ]
    chosen = verdicts.select(variants, baseline_accuracy=0.80)
    assert (chosen["variant"], chosen["artifact"], chosen["latency_ms"]) == ("pruned", "onnx:int8", 1.02)
    assert "baseline 80.0%" in verdicts.closing_line(chosen)
    assert verdicts.select(variants, baseline_accuracy=0.80, tolerance_points=10)["artifact"] == "tflite:int8"
    assert verdicts.select(variants[2:], baseline_accuracy=0.80) is None
    assert verdicts.closing_line(None).startswith("selected: nothing")


def test_without_labelled_data_an_artifact_qualifies_by_parity():
    variants = [{"id": "a", "name": "m", "status": "ok",
                 "artifacts": [_artifact("tflite", "none", 1.0, 5, None, parity_ok=False),
                               _artifact("onnx", "none", 2.0, 5, None)]}]
    assert verdicts.select(variants, baseline_accuracy=None)["artifact"] == "onnx"
