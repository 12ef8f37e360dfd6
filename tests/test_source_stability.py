"""A quantized artifact that fails validation says when its *source* could not have been matched:
the float model moves under a couple of grey levels of input noise (optkit.parity.source_stability),
as a barely trained deep model does. And the int8 accuracy goal counts as reached only when the
artifact would also pass the validator (quant_debug.search's `faithful`): a model near chance
loses no accuracy however wrong its int8 copy is. numpy only: the unit tier runs it."""
import numpy as np
import pytest

from optkit import parity, quant_debug

pytestmark = pytest.mark.unit

RNG = np.random.default_rng(0)
X = RNG.uniform(0, 1, (32, 8, 8, 3)).astype(np.float32)
W = RNG.normal(size=(8 * 8 * 3, 10)).astype(np.float32) / 14.0


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _head(gain):
    """Logits sin(gain * linear): a gentle function at low gain, a chaotic one at high gain
    (a tiny input change moves every logit through whole periods)."""
    return lambda arrays: [_softmax(3.0 * np.sin(gain * arrays[0].reshape(len(arrays[0]), -1) @ W))]


def test_a_smooth_source_holds_still_and_gets_no_note():
    snr = parity.source_stability(_head(0.3), [X], 1 / 255)
    assert snr > 30, snr
    assert parity.stability_note(snr, "int8") == ""


def test_a_high_gain_source_swings_and_the_reason_says_so():
    snr = parity.source_stability(_head(300.0), [X], 1 / 255)
    assert snr < parity.UNSTABLE_SOURCE_DB, snr
    note = parity.stability_note(snr, "int8")
    assert "unstable" in note and f"{snr:.1f} dB" in note and "int8" in note


def test_noise_is_one_grey_level_in_the_models_space_per_channel():
    seen = []

    def record(arrays):
        seen.append(arrays[0])
        return [arrays[0].reshape(len(arrays[0]), -1)]

    # raw pixels: one grey level is 1.0; per-channel scales broadcast over the last axis
    parity.source_stability(record, [X * 255], [1.0, 2.0, 4.0])
    moved = np.abs(seen[1] - seen[0]).reshape(-1, 3).max(0)
    assert np.all(moved <= np.array([2.0, 4.0, 8.0]) * parity.STABILITY_GREY_LEVELS / 2 * 1.001)
    assert np.all(moved > np.array([2.0, 4.0, 8.0]) * 0.9)


def test_nothing_to_perturb_gives_none():
    assert parity.source_stability(lambda a: [a[0]], [np.arange(6, dtype=np.float32).reshape(2, 3)], 1.0) is None


class _Session:
    """Two quantized layers; 'a' the worst by diagnosis."""
    backend = "tflite"

    def nodes_by_layer(self):
        return {"a": ["a"], "b": ["b"]}

    def diagnose(self, keep=()):
        rows = [quant_debug.LayerError("a", "CONV_2D", 5.0, 0.1, nodes=["a"]),
                quant_debug.LayerError("b", "CONV_2D", 30.0, 0.01, nodes=["b"])]
        return [r for r in rows if r.name not in keep]


def test_goal_within_accuracy_but_unfaithful_keeps_searching():
    written = []

    def write(keep):
        written.append(list(keep))
        return "+".join(keep) or "full"

    # accuracy never drops (a model at chance), but the full-int8 outputs do not match float
    path, kept, drop, tried = quant_debug.search(
        _Session(), write, lambda p: 10.0, 10.0, 1.0, 2,
        faithful=lambda p: "int8: SNR -3.0 dB < 10 dB" if p == "full" else None)
    assert path == "a" and kept == ["a"] and drop == 0.0
    assert tried[0]["unfaithful"].startswith("int8: SNR")
    assert "unfaithful" not in tried[1]


def test_goal_never_faithful_ends_at_the_limit():
    path, kept, _, tried = quant_debug.search(_Session(), lambda keep: "+".join(keep) or "full",
                                              lambda p: 10.0, 10.0, 1.0, 1, faithful=lambda p: "no")
    assert path is None and kept == ["a"] and all(t["unfaithful"] == "no" for t in tried)
