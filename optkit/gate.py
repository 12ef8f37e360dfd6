"""The latency gate: is a candidate slower than its baseline, beyond noise and beyond a tolerance?

Two statistics are compared, each needing two things at once to call a regression:
  * median  - evidence: a one-sided Mann-Whitney U test says the candidate's latencies are
              stochastically larger, p < alpha (default 0.01); magnitude: the median ratio is above
              1 + `max_slowdown` (default 10 %). With hundreds of samples a 1 % slowdown is
              "significant"; it is not a regression the user cares about.
  * p90     - the tail, which the median cannot see (one call in three 3x slower leaves the median
              where it was): a regression only when the one-sided (1 - alpha) lower confidence
              bound of the p90 ratio is above 1 + `max_tail_slowdown` (20 %; never stricter than
              `max_slowdown`, so a tolerated uniform slowdown passes) - evidence and magnitude in
              one. The bound is a percentile bootstrap (scipy.stats.bootstrap) of the log ratio,
              which held its nominal rate on skewed and bimodal latencies where a normal-theory
              interval did not. Why the bound and not the point estimate: under load the p90 sits
              at the edge of the preempted calls and its estimate swings (0.27x to 3.6x between
              identical models here); with the point estimate as magnitude, a model 3 % slower was
              called a p90 regression in 2 trials in 100 (benchmarks/gate_power.py).
Too few samples in either set -> "inconclusive": the test has no power there, and a gate that
passes because it could not see is worse than one that says so. A median slowdown above the
tolerance that is not significant is also "inconclusive" (measure more), never a silent pass.
Every inconclusive result carries the exact command to rerun (`rerun`).
The tail decides only when it proves a regression. An unproven p90 excess is a note in
`decided_by`, not an inconclusive gate: with that swing, "inconclusive" failed one A/A check in
five while proving nothing; a real tail regression clears the bound.

Beside latency, deterministic checks compare what does not need statistics: file size,
parameters, FLOPs (when the bench JSON carries them) and the validation status. Every result
says which test and which numbers decided it (`decided_by`).

Baseline and candidate measured on different devices, or with different threads or batch, do
not compare: the gate refuses them (exit 2) unless told to go on (then it warns); a different
runtime or runtime version is only a warning, since it may be the change under test
(optkit.comparable decides which is which).

Samples come either from two bench JSON files with raw `samples_ms`, or are measured now by
`measure_interleaved`, alternating baseline and candidate call by call in one process so that
machine drift (another job starting, thermal throttling) hits both sets alike.

TensorFlow-free and importable on Python 3.8; scipy is imported only when a decision is made.
"""
from __future__ import annotations

import json
import math
import os
import shlex
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from optkit import comparable
from optkit.errors import UserError

PASS, REGRESSION, INCONCLUSIVE = "pass", "regression", "inconclusive"

DEFAULT_ALPHA = 0.01
DEFAULT_MAX_SLOWDOWN = 0.10
# The tail: which quantile, and how much slower it may get. Tails move more than medians from run
# to run, so their tolerance is wider (benchmarks/gate_power.py measured the A/A spread).
TAIL_QUANTILE = 0.90
TAIL_NAME = f"p{round(TAIL_QUANTILE * 100)}"
DEFAULT_MAX_TAIL_SLOWDOWN = 0.20
# Bootstrap size, and the samples a side it resamples from (a seeded random subset beyond that:
# 2000 samples pin a p90 to about 1 %, and the resampling cost grows with the count).
BOOTSTRAP_RESAMPLES = 1999
BOOTSTRAP_MAX_SAMPLES = 2000
# Below ~20 samples a one-sided U test at alpha 0.01 needs an almost perfect separation of the
# two sets to reject; 30 keeps it usable while still demanding more than a handful of runs.
DEFAULT_MIN_SAMPLES = 30
# Size, parameters and FLOPs are exact numbers: growth past this fraction fails the gate.
DEFAULT_MAX_GROWTH = 0.10

# Exit codes of `optkit gate`: 0 pass, 3 regression (the CLI contract), 4 inconclusive (a gate
# that could not decide must not look like a pass in CI; see docs/ci-gate.md).
EXIT_CODES = {PASS: 0, REGRESSION: 3, INCONCLUSIVE: 4}


@dataclass
class Check:
    """One deterministic comparison beside latency."""

    name: str                       # size_bytes | params | flops | validation | same_settings | same_device
    status: str                     # pass | fail | skipped | warn
    baseline: Any = None
    candidate: Any = None
    limit: Any = None
    reason: str = ""

    def to_json(self):
        return {"name": self.name, "status": self.status, "baseline": self.baseline,
                "candidate": self.candidate, "limit": self.limit, "reason": self.reason}


@dataclass
class GateResult:
    decision: str
    median_ratio: Optional[float]
    p_value: Optional[float]
    n_baseline: int
    n_candidate: int
    baseline_median_ms: Optional[float]
    candidate_median_ms: Optional[float]
    alpha: float
    max_slowdown: float
    min_samples: int
    decided_by: str
    test: str = "median: mann-whitney-u (one-sided: candidate slower); p90: percentile-bootstrap lower bound"
    checks: List[Check] = field(default_factory=list)
    confirmation: Optional[Dict[str, Any]] = None   # the rerun's own result, when --confirm ran
    statistic: str = "median"       # what decided: median | p90 | median+p90 | samples | a check's name
    tail: Optional[Dict[str, Any]] = None           # the p90 comparison (Stat.to_json)
    max_tail_slowdown: float = DEFAULT_MAX_TAIL_SLOWDOWN
    rerun: Optional[str] = None     # for an inconclusive result: the command that would settle it

    @property
    def exit_code(self):
        return EXIT_CODES[self.decision]

    def to_json(self):
        return {
            "decision": self.decision,
            "median_ratio": _round(self.median_ratio, 6),
            "p_value": self.p_value,
            "n_baseline": self.n_baseline,
            "n_candidate": self.n_candidate,
            "baseline_median_ms": _round(self.baseline_median_ms, 6),
            "candidate_median_ms": _round(self.candidate_median_ms, 6),
            "alpha": self.alpha,
            "max_slowdown": self.max_slowdown,
            "min_samples": self.min_samples,
            "test": self.test,
            "decided_by": self.decided_by,
            "statistic": self.statistic,
            "tail": self.tail,
            "max_tail_slowdown": self.max_tail_slowdown,
            "rerun": self.rerun,
            "checks": [c.to_json() for c in self.checks],
            "confirmation": self.confirmation,
        }


def _round(value, digits):
    return None if value is None else round(float(value), digits)


def parse_percent(text) -> float:
    """'10%' or '10' -> 0.10 (a bare number is a percentage too, so '0.5' means 0.5 %)."""
    raw = str(text).strip()
    number = raw[:-1].strip() if raw.endswith("%") else raw
    try:
        value = float(number)
    except ValueError:
        raise UserError(f"not a percentage: {text!r} (expected e.g. 10%)") from None
    if not math.isfinite(value) or value < 0:
        raise UserError(f"percentage must be a finite number >= 0, got {text!r}")
    return value / 100.0


def format_p(p) -> str:
    """p-values too small for a double print as 0; say what is known instead."""
    if p is None:
        return "p=n/a"
    return "p<1e-300" if p < 1e-300 else f"p={p:.3g}"


# ----------------------------------------------------------------------------------- latency test
def _scipy_stats():
    try:
        from scipy import stats
    except ImportError:
        raise UserError("the latency gate needs scipy for its tests: "
                        "pip install 'optkit[report]' (or pip install scipy)") from None
    return stats


def _mann_whitney_greater(candidate: Sequence[float], baseline: Sequence[float]) -> float:
    """p-value of H1: candidate latencies are stochastically greater than the baseline's."""
    return float(_scipy_stats().mannwhitneyu(candidate, baseline, alternative="greater").pvalue)


def quantile_shift(baseline: Sequence[float], candidate: Sequence[float], q: float = TAIL_QUANTILE,
                   alpha: float = DEFAULT_ALPHA, seed: int = 0, limit: float = 1.0) -> Tuple[float, float, float]:
    """(ratio, lower bound, p): the candidate's q-quantile over the baseline's, the one-sided
    (1 - alpha) lower confidence bound of that ratio, and the bootstrap p-value of "not above
    `limit`" (the bound is above `limit` when p < alpha).

    A percentile bootstrap of log(q_cand / q_base), resampling each set on its own
    (scipy.stats.bootstrap). Seeded, so the same samples always give the same decision.
    """
    import numpy as np

    stats = _scipy_stats()
    rng = np.random.default_rng(seed)
    base, cand = np.asarray(baseline, float), np.asarray(candidate, float)
    ratio = float(np.quantile(cand, q) / np.quantile(base, q))
    base, cand = (x if len(x) <= BOOTSTRAP_MAX_SAMPLES else rng.choice(x, BOOTSTRAP_MAX_SAMPLES, replace=False)
                  for x in (base, cand))

    def log_ratio(c, b, axis):
        return np.log(np.quantile(c, q, axis=axis) / np.quantile(b, q, axis=axis))

    res = stats.bootstrap((cand, base), log_ratio, vectorized=True, paired=False,
                          n_resamples=BOOTSTRAP_RESAMPLES, batch=max(1, int(2e6 // max(len(base), len(cand)))),
                          confidence_level=1 - alpha, alternative="greater", method="percentile", rng=rng)
    dist = res.bootstrap_distribution
    p = float((np.sum(dist <= math.log(limit)) + 1) / (len(dist) + 1))
    return ratio, float(math.exp(res.confidence_interval.low)), p


def _median(values: Sequence[float]) -> float:
    ordered = sorted(float(v) for v in values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2.0


def _clean_samples(samples, label) -> List[float]:
    try:
        values = [float(v) for v in samples]
    except (TypeError, ValueError):
        raise UserError(f"{label}: samples_ms must be a list of numbers") from None
    bad = [v for v in values if not math.isfinite(v) or v < 0]
    if bad:
        raise UserError(f"{label}: samples_ms holds {len(bad)} negative or non-finite values")
    return values


@dataclass
class Stat:
    """One statistic's comparison: median or p90."""

    name: str
    baseline_ms: float
    candidate_ms: float
    ratio: float
    limit: float
    significant: bool
    text: str                      # the numbers, for decided_by
    decision: str = PASS
    extra: Dict[str, Any] = field(default_factory=dict)

    def to_json(self):
        return dict({"statistic": self.name, "baseline_ms": _round(self.baseline_ms, 6),
                     "candidate_ms": _round(self.candidate_ms, 6), "ratio": _round(self.ratio, 6),
                     "limit": round(self.limit, 6), "significant": self.significant,
                     "decision": self.decision}, **self.extra)


def _median_stat(base, cand, alpha, max_slowdown) -> Stat:
    med_b, med_c = _median(base), _median(cand)
    if med_b <= 0:
        raise UserError("baseline median latency is 0 ms; the timer resolution is too coarse to compare")
    ratio, p, limit = med_c / med_b, _mann_whitney_greater(cand, base), 1.0 + max_slowdown
    text = (f"median {med_b:.4g} -> {med_c:.4g} ms (ratio {ratio:.3f}, limit {limit:.3f}), "
            f"Mann-Whitney U one-sided {format_p(p)} (alpha {alpha:g})")
    return Stat("median", med_b, med_c, ratio, limit, p < alpha, text, extra={"p_value": p})


def _tail_stat(base, cand, alpha, max_tail_slowdown) -> Optional[Stat]:
    import numpy as np

    q_b, q_c = float(np.quantile(base, TAIL_QUANTILE)), float(np.quantile(cand, TAIL_QUANTILE))
    if q_b <= 0:
        return None
    name, limit = TAIL_NAME, 1.0 + max_tail_slowdown
    ratio, low, p = quantile_shift(base, cand, TAIL_QUANTILE, alpha, limit=limit)
    text = (f"{name} {q_b:.4g} -> {q_c:.4g} ms (ratio {ratio:.3f}, limit {limit:.3f}), bootstrap "
            f"{100 * (1 - alpha):g}% lower bound {low:.3f} ({'>' if low > limit else '<='} the limit)")
    # Significant here means: proven above the limit, not merely above 1 (module doc).
    return Stat(name, q_b, q_c, ratio, limit, low > limit, text,
                extra={"quantile": TAIL_QUANTILE, "ratio_lower_bound": round(low, 6), "p_value": p,
                       "confidence": 1 - alpha, "method": "percentile bootstrap of the log quantile ratio"})


def latency_decision(baseline_ms, candidate_ms, *, alpha=DEFAULT_ALPHA,
                     max_slowdown=DEFAULT_MAX_SLOWDOWN, min_samples=DEFAULT_MIN_SAMPLES,
                     max_tail_slowdown=DEFAULT_MAX_TAIL_SLOWDOWN) -> GateResult:
    """Decide on latency alone from two sample sets (milliseconds): the median and the p90."""
    base = _clean_samples(baseline_ms, "baseline")
    cand = _clean_samples(candidate_ms, "candidate")
    if not 0 < alpha < 1:
        raise UserError(f"alpha must be between 0 and 1, got {alpha}")
    if min_samples < 2:
        raise UserError(f"min-samples must be at least 2, got {min_samples}")
    common = dict(n_baseline=len(base), n_candidate=len(cand), alpha=alpha, max_slowdown=max_slowdown,
                  min_samples=min_samples, max_tail_slowdown=max_tail_slowdown)
    if len(base) < min_samples or len(cand) < min_samples:
        med_b = _median(base) if base else None
        med_c = _median(cand) if cand else None
        ratio = med_c / med_b if med_b and med_c is not None else None
        return GateResult(INCONCLUSIVE, ratio, None, baseline_median_ms=med_b, candidate_median_ms=med_c,
                          statistic="samples",
                          decided_by=(f"too few samples: baseline n={len(base)}, candidate n={len(cand)}, "
                                      f"need at least {min_samples} each"), **common)
    median = _median_stat(base, cand, alpha, max_slowdown)
    # The tail may always slow down as much as the median may: a uniform slowdown the user
    # tolerates (--max-slowdown 50%) must not fail on the p90 instead.
    tail = _tail_stat(base, cand, alpha, max(max_tail_slowdown, max_slowdown))
    # An unproven p90 excess is a note, not an inconclusive gate (module doc).
    for stat, unproven in ((median, INCONCLUSIVE), (tail, PASS)):
        if stat is not None and stat.ratio > stat.limit:
            stat.decision = REGRESSION if stat.significant else unproven
    stats = [x for x in (median, tail) if x is not None]
    regressed = [x for x in stats if x.decision == REGRESSION]
    unsure = [x for x in stats if x.decision == INCONCLUSIVE]
    if regressed:
        decision, deciding = REGRESSION, regressed
        why = f"latency regression in the {' and '.join(x.name for x in regressed)}: significant AND above the tolerance"
    elif unsure:
        decision, deciding = INCONCLUSIVE, unsure
        why = (f"{' and '.join(x.name for x in unsure)} slowdown above the tolerance but not significant "
               "(measure more)")
    else:
        decision, deciding = PASS, stats
        why = ("pass: significantly slower but within the tolerance" if median.significant
               else "pass: no significant slowdown beyond the tolerance")
    others = [x for x in stats if x not in deciding]
    numbers = "; ".join(x.text for x in deciding + others) + f"; n={len(base)}/{len(cand)}"
    if tail is not None and tail.ratio > tail.limit and not tail.significant:
        numbers += (f"; note: the {tail.name} looks {tail.ratio:.2f}x slower, not proven: about "
                    f"{_round_up(4 * min(len(base), len(cand)))} runs a side would tell")
    return GateResult(decision, median.ratio, median.extra["p_value"], baseline_median_ms=median.baseline_ms,
                      candidate_median_ms=median.candidate_ms, statistic="+".join(x.name for x in deciding),
                      tail=tail.to_json() if tail else None, decided_by=f"{why}; {numbers}", **common)


# ---------------------------------------------------------------------------- deterministic checks
def _number(meta, *keys):
    for key in keys:
        value = meta.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
    return None


def _validation_ok(meta) -> Optional[bool]:
    """The validation status a record carries: parity.ok / validation.ok (export fidelity), or a
    status of "failed". A bare status "ok" only says the benchmark ran, so it counts as unknown."""
    for key in ("parity", "validation"):
        block = meta.get(key)
        if isinstance(block, dict) and isinstance(block.get("ok"), bool):
            return block["ok"]
    if meta.get("status") == "failed":
        return False
    return None


def deterministic_checks(baseline_meta: Dict[str, Any], candidate_meta: Dict[str, Any], *,
                         max_growth=DEFAULT_MAX_GROWTH) -> List[Check]:
    """Size, parameters, FLOPs (growth above `max_growth` fails), validation, and whether the
    two were measured alike (`same_environment`: pass, or warn listing what differs)."""
    checks = []
    limit = 1.0 + max_growth
    for name, keys in (("size_bytes", ("size_bytes",)), ("params", ("params", "parameters")),
                       ("flops", ("flops",))):
        b, c = _number(baseline_meta, *keys), _number(candidate_meta, *keys)
        if b is None or c is None:
            checks.append(Check(name, "skipped", b, c, None, "not recorded for both"))
        elif b == 0:
            checks.append(Check(name, "pass" if c == 0 else "fail", b, c, 0, "baseline is 0"))
        else:
            ok = c / b <= limit
            checks.append(Check(name, "pass" if ok else "fail", b, c, round(limit, 6),
                                f"ratio {c / b:.3f} {'<=' if ok else '>'} {limit:.3f}"))
    vb, vc = _validation_ok(baseline_meta), _validation_ok(candidate_meta)
    if vc is None:
        checks.append(Check("validation", "skipped", vb, vc, True, "candidate carries no validation status"))
    else:
        checks.append(Check("validation", "pass" if vc else "fail", vb, vc, True,
                            "candidate validated" if vc else "candidate failed validation"))
    refused, warned = comparable.differences(baseline_meta, candidate_meta)
    differ = refused + warned
    if differ:
        checks.append(Check("same_environment", "warn", None, None, None,
                            "baseline and candidate were measured differently: " + "; ".join(differ)))
    elif comparable.recorded(baseline_meta) and comparable.recorded(candidate_meta):
        checks.append(Check("same_environment", "pass", None, None, None,
                            "same device, runtime, threads and batch as far as recorded"))
    else:
        checks.append(Check("same_environment", "skipped", None, None, None, "no settings or device recorded"))
    return checks


def decide(baseline_ms, candidate_ms, *, baseline_meta=None, candidate_meta=None,
           alpha=DEFAULT_ALPHA, max_slowdown=DEFAULT_MAX_SLOWDOWN, min_samples=DEFAULT_MIN_SAMPLES,
           max_growth=DEFAULT_MAX_GROWTH, max_tail_slowdown=DEFAULT_MAX_TAIL_SLOWDOWN,
           allow_env_mismatch=False) -> GateResult:
    """Latency decision plus deterministic checks; a failed check is a regression on its own.

    Samples from different devices, threads or batch sizes raise UserError (exit 2) unless
    `allow_env_mismatch`, which turns the refusal into the `same_environment` warning.
    """
    refused, _ = comparable.differences(baseline_meta or {}, candidate_meta or {})
    if refused and not allow_env_mismatch:
        raise UserError("baseline and candidate were measured on different devices or settings ("
                        + "; ".join(refused) + "): their latencies do not compare. Measure both on one "
                        "device with the same threads and batch, or pass --allow-env-mismatch")
    result = latency_decision(baseline_ms, candidate_ms, alpha=alpha, max_slowdown=max_slowdown,
                              min_samples=min_samples, max_tail_slowdown=max_tail_slowdown)
    result.checks = deterministic_checks(baseline_meta or {}, candidate_meta or {}, max_growth=max_growth)
    failed = [c for c in result.checks if c.status == "fail"]
    if failed:
        latency_part = f"latency alone: {result.decision} ({result.decided_by})"
        result.decision = REGRESSION
        result.statistic = "+".join(c.name for c in failed)
        result.decided_by = ("deterministic check failed: "
                             + "; ".join(f"{c.name} {c.baseline} -> {c.candidate} ({c.reason})" for c in failed)
                             + f"; {latency_part}")
    return result


# ----------------------------------------------------------------------------------------- inputs
@dataclass
class SampleSet:
    samples_ms: List[float]
    meta: Dict[str, Any]          # size_bytes, params, flops, parity/status, device, path, ...
    source: str


def _split_selector(spec):
    """'bench.json' -> ('bench.json', None); 'both.json#1' -> ('both.json', 1)."""
    text = str(spec)
    head, sep, tail = text.rpartition("#")
    if sep and head.lower().endswith(".json") and tail.isdigit():
        return head, int(tail)
    return text, None


def load_bench_json(spec) -> SampleSet:
    """A bench JSON (`optkit bench --json`/`-o`) result holding raw `samples_ms`.

    `FILE.json` must hold exactly one such result; `FILE.json#N` picks result N (0-based), for
    a file where one `optkit bench A B` run measured both artifacts.
    """
    path, index = _split_selector(spec)
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise UserError(f"{path} is not valid JSON: {exc}") from None
    if isinstance(doc, dict) and isinstance(doc.get("results"), list):
        results = doc["results"]
        env = doc.get("env") or {}
    elif isinstance(doc, dict) and "samples_ms" in doc:
        results, env = [doc], {}
    else:
        raise UserError(f"{path}: expected bench JSON with a 'results' list (optkit bench --json)")
    if index is not None:
        if index >= len(results):
            raise UserError(f"{spec}: {path} has {len(results)} results (indices 0..{len(results) - 1})")
        results = [results[index]]
    with_samples = [r for r in results if isinstance(r, dict) and r.get("samples_ms")]
    if not with_samples and len(results) == 1:
        raise UserError(f"{spec}: the result has no raw samples_ms (aggregates alone, e.g. from an "
                        "older optkit's --adb bench, cannot be tested statistically; bench it again)")
    if len(with_samples) != 1:
        raise UserError(f"{path}: the gate compares one result with raw samples_ms; found "
                        f"{len(with_samples)} (of {len(results)} results) - pick one with {path}#N")
    result = dict(with_samples[0])
    meta = {k: v for k, v in result.items() if k != "samples_ms"}
    device = result.get("device") or (env.get("device") if isinstance(env, dict) else None)
    if not device and isinstance(env, dict) and env.get("cpu_model"):
        device = env   # a local `optkit bench` puts the device fingerprint at the top of env
    if device:
        meta["device"] = device
    return SampleSet(_clean_samples(result["samples_ms"], str(spec)), meta, str(spec))


def is_bench_json(spec) -> bool:
    return _split_selector(spec)[0].lower().endswith(".json")


def measure_interleaved(baseline: Callable[[], Any], candidate: Callable[[], Any], *, warmup=10,
                        min_time=2.0, min_runs=50, max_runs=100000, seed=0,
                        clock=time.perf_counter) -> Tuple[List[float], List[float]]:
    """Time two zero-argument calls alternately; returns (baseline_ms, candidate_ms).

    Each round times both once, in an order drawn at random per round: a fixed A-then-B order
    would charge any "second call after a switch" effect (caches, frequency ramps) to one side.
    Runs until both `min_time` seconds per side and `min_runs` rounds are reached.
    """
    import random

    order = random.Random(seed)
    for _ in range(max(0, warmup)):
        baseline()
        candidate()
    a_ms, b_ms = [], []
    spent_a = spent_b = 0.0
    while len(a_ms) < max_runs and (len(a_ms) < min_runs or min(spent_a, spent_b) < min_time):
        pair = ((baseline, a_ms), (candidate, b_ms))
        if order.random() < 0.5:
            pair = pair[::-1]
        for fn, bucket in pair:
            t0 = clock()
            fn()
            bucket.append((clock() - t0) * 1000.0)
        spent_a += a_ms[-1] / 1000.0
        spent_b += b_ms[-1] / 1000.0
    return a_ms, b_ms


def _artifact_meta(path, predictor) -> Dict[str, Any]:
    from optkit import device

    return {"path": str(path), "size_bytes": os.path.getsize(path),
            "runtime": getattr(predictor, "runtime", None), "threads": getattr(predictor, "threads", None),
            "timed_call": getattr(predictor, "timed_call", None),
            "device": device.fingerprint(threads=getattr(predictor, "threads", None),
                                         runtime=getattr(predictor, "runtime", None))}


def measure_artifacts(baseline_path, candidate_path, *, runtime=None, threads=None, batch=1,
                      warmup=10, min_time=2.0, min_runs=50, seed=0,
                      progress: Optional[Callable[[str], None]] = None) -> Tuple[SampleSet, SampleSet]:
    """Load both artifacts with optkit.runner and measure them interleaved in this process."""
    for p in (baseline_path, candidate_path):
        if not os.path.isfile(p):
            raise UserError(f"no such artifact: {p}")
    from optkit.runner import RunnerError, load_predictor, random_inputs

    # The interpreter loaded second ran ~1 % faster than the first on one and the same file
    # (LiteRT, measured in benchmarks/gate_power.py's A/A): the seed picks the order, so the
    # --confirm rerun (seed 1) loads them the other way round.
    order = [(0, baseline_path), (1, candidate_path)][:: 1 if seed % 2 else -1]
    try:
        loaded = {i: load_predictor(str(p), runtime=runtime, threads=threads) for i, p in order}
    except RunnerError as exc:   # a bad model file or runtime name: the user's input
        raise UserError(str(exc)) from None
    pa, pb = loaded[0], loaded[1]
    if progress:
        progress(f"measuring {baseline_path} and {candidate_path} interleaved "
                 f"(>= {min_time:g} s and {min_runs} runs each, {pa.threads} thread(s), batch {batch})")
    xa = random_inputs(pa.inputs, batch=batch, seed=seed)
    xb = random_inputs(pb.inputs, batch=batch, seed=seed)
    # Inputs set once per model: each timed call is the runtime's own (runner.Predictor.prepare).
    a_ms, b_ms = measure_interleaved(pa.prepare(*xa), pb.prepare(*xb), warmup=warmup,
                                     min_time=min_time, min_runs=min_runs, seed=seed)
    return (SampleSet(a_ms, _artifact_meta(baseline_path, pa), str(baseline_path)),
            SampleSet(b_ms, _artifact_meta(candidate_path, pb), str(candidate_path)))


def run_gate(baseline, candidate, *, alpha=DEFAULT_ALPHA, max_slowdown=DEFAULT_MAX_SLOWDOWN,
             min_samples=DEFAULT_MIN_SAMPLES, max_growth=DEFAULT_MAX_GROWTH, confirm=False,
             runtime=None, threads=None, batch=1, warmup=10, min_time=2.0,
             max_tail_slowdown=DEFAULT_MAX_TAIL_SLOWDOWN, allow_env_mismatch=False,
             progress: Optional[Callable[[str], None]] = None) -> GateResult:
    """The whole gate: two bench JSON files, or two artifacts measured now (interleaved).

    With `confirm`, a first "regression" on artifacts is re-measured from scratch; it stands only
    if the rerun also says regression, otherwise the result is "inconclusive". An inconclusive
    result gets `rerun`: the exact commands that would give it the samples it lacked.
    """
    say = progress or (lambda msg: None)
    kinds = (is_bench_json(baseline), is_bench_json(candidate))
    if kinds[0] != kinds[1]:
        # A time measured now against one measured earlier compares two machine states, not two models.
        raise UserError("give two bench JSON files or two artifacts, not one of each: "
                        "latencies measured at different times do not compare")
    opts = dict(alpha=alpha, max_slowdown=max_slowdown, min_samples=min_samples, max_growth=max_growth,
                max_tail_slowdown=max_tail_slowdown, allow_env_mismatch=allow_env_mismatch)
    # The options as typed on the command line, for the rerun hint (defaults left out).
    flags = [(f, v) for f, v, default in (
        ("--max-slowdown", f"{max_slowdown * 100:g}%", f"{DEFAULT_MAX_SLOWDOWN * 100:g}%"),
        ("--max-tail-slowdown", f"{max_tail_slowdown * 100:g}%", f"{DEFAULT_MAX_TAIL_SLOWDOWN * 100:g}%"),
        ("--max-growth", f"{max_growth * 100:g}%", f"{DEFAULT_MAX_GROWTH * 100:g}%"),
        ("--alpha", f"{alpha:g}", f"{DEFAULT_ALPHA:g}"), ("--min-samples", min_samples, DEFAULT_MIN_SAMPLES),
        ("--allow-env-mismatch", allow_env_mismatch, False)) if v != default]
    if kinds[0]:
        if confirm:
            raise UserError("--confirm re-measures, which needs artifacts, not bench JSON files")
        a, b = load_bench_json(baseline), load_bench_json(candidate)
        result = decide(a.samples_ms, b.samples_ms, baseline_meta=a.meta, candidate_meta=b.meta, **opts)
        if result.decision == INCONCLUSIVE:
            _add_rerun(result, _bench_rerun([a, b], _needed_runs(result))
                       + " && " + _command(["optkit", "gate", "-a", baseline, "-b", candidate], flags))
        return result
    measure = dict(runtime=runtime, threads=threads, batch=batch, warmup=warmup, min_time=min_time,
                   min_runs=min_samples)
    flags += [(f, v) for f, v, default in (("--runtime", runtime, None), ("--threads", threads, None),
                                           ("--batch", batch, 1), ("--warmup", warmup, 10),
                                           ("--confirm", confirm, False)) if v != default]
    a, b = measure_artifacts(baseline, candidate, seed=0, progress=say, **measure)
    result = decide(a.samples_ms, b.samples_ms, baseline_meta=a.meta, candidate_meta=b.meta, **opts)
    if confirm and result.decision == REGRESSION:
        say("regression found; confirming with a fresh interleaved run")
        a2, b2 = measure_artifacts(baseline, candidate, seed=1, **measure)
        again = decide(a2.samples_ms, b2.samples_ms, baseline_meta=a2.meta, candidate_meta=b2.meta, **opts)
        result.confirmation = again.to_json()
        if again.decision != REGRESSION:
            result.decision = INCONCLUSIVE
            result.statistic = "confirmation"
            result.decided_by = (f"first run said regression ({result.decided_by}) but the confirming "
                                 f"rerun said {again.decision} ({again.decided_by})")
        else:
            result.decided_by += f"; confirmed by a rerun ({again.decided_by})"
    if result.decision == INCONCLUSIVE:
        # Samples accrue at the slower model's median per side: time for the runs still needed.
        slowest_s = max(result.baseline_median_ms or 0, result.candidate_median_ms or 0) / 1000.0
        seconds = max(min_time * 4, _needed_runs(result) * slowest_s * 1.2)
        _add_rerun(result, _command(["optkit", "gate", "-a", baseline, "-b", candidate],
                                    flags + [("--min-time", f"{math.ceil(seconds * 10) / 10:g}")]))
    return result


# ------------------------------------------------------------------------- what to rerun, exactly
def _needed_runs(result: GateResult) -> int:
    """Runs a side that would let an inconclusive result decide: the minimum when there were too
    few; else four times as many (the standard error halves), and enough for the tail test."""
    n = min(result.n_baseline, result.n_candidate)
    return _round_up(result.min_samples if result.statistic == "samples" else max(4 * n, result.min_samples))


def _round_up(runs: int) -> int:
    return int(math.ceil(runs / 10.0) * 10)


def _command(argv: Sequence[Any], flags: Sequence[Tuple[str, Any]] = ()) -> str:
    for flag, value in flags:
        argv = list(argv) + ([flag] if value is True else [flag, str(value)])
    return " ".join(shlex.quote(str(a)) for a in argv)


def _bench_rerun(sides: Sequence[SampleSet], runs: int) -> str:
    """`optkit bench` command(s) that rewrite the two JSON files with `runs` samples each: one
    command when both came from one file (FILE.json#0 / #1), else one per file."""
    files: Dict[str, Dict[str, SampleSet]] = {}
    for side in sides:   # (the same result on both sides - an A/A check - is benched once)
        files.setdefault(_split_selector(side.source)[0], {})[side.source] = side
    commands = []
    for out, by_source in files.items():
        members = list(by_source.values())
        meta = members[0].meta
        paths = [m.meta.get("path") or "MODEL" for m in members]
        flags = [("--runtime", meta.get("runtime")), ("--threads", meta.get("threads")),
                 ("--batch", meta.get("batch") if meta.get("batch") not in (None, 1) else None),
                 ("--remote", meta.get("remote")), ("--adb", meta.get("adb_serial"))]
        if meta.get("adb_serial"):
            flags += [("--benchmark-binary", meta.get("benchmark_binary") or "BENCHMARK_MODEL")]
            flags = [(f, v) for f, v in flags if f != "--runtime"]   # benchmark_model is not a --runtime
        flags = [(f, v) for f, v in flags if v is not None] + [("--min-runs", runs), ("-o", out)]
        commands.append(_command(["optkit", "bench"] + paths, flags))
    return " && ".join(commands)


def _add_rerun(result: GateResult, command: str) -> None:
    result.rerun = command
    result.decided_by += f"; to decide, rerun: {command}"
