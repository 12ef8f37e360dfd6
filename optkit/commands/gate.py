"""`optkit gate`: fail CI when a candidate is slower than its baseline (logic in optkit.gate).

Exit codes: 0 pass, 3 regression, 4 inconclusive (too few samples, or a slowdown above the
tolerance that is not significant, or a --confirm rerun that disagreed), 2 bad input (including
results measured on different devices, threads or batch sizes, unless --allow-env-mismatch).
"""
from __future__ import annotations

import json

import click

from optkit import gate


class _Percent(click.ParamType):
    name = "PCT"

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            return value
        from optkit.errors import UserError

        try:
            return gate.parse_percent(value)
        except UserError as exc:
            self.fail(str(exc), param, ctx)


@click.command("gate")
@click.option("--baseline", "-a", required=True, metavar="A",
              help="Baseline: an artifact (.tflite/.onnx, measured now, interleaved with B) or a bench "
                   "JSON with raw samples_ms (FILE.json#N picks result N).")
@click.option("--candidate", "-b", required=True, metavar="B",
              help="Candidate: same kind as the baseline.")
@click.option("--max-slowdown", type=_Percent(), default="10%", show_default=True,
              help="Tolerated median slowdown, e.g. 10%.")
@click.option("--max-tail-slowdown", type=_Percent(), default="20%", show_default=True,
              help="Tolerated p90 slowdown (the tail the median cannot see; at least --max-slowdown).")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=gate.DEFAULT_ALPHA, show_default=True,
              help="Significance level of the one-sided Mann-Whitney U test.")
@click.option("--min-samples", type=click.IntRange(2), default=gate.DEFAULT_MIN_SAMPLES,
              show_default=True, help="Fewer samples in either set -> inconclusive (exit 4).")
@click.option("--max-growth", type=_Percent(), default="10%", show_default=True,
              help="Tolerated growth of size, parameters and FLOPs.")
@click.option("--confirm", is_flag=True,
              help="Re-measure a regression from scratch; it stands only if the rerun agrees.")
@click.option("--runtime", default=None, help="Runtime for artifacts (default: by file type).")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="Threads for artifacts, the same for both [default: all available cores].")
@click.option("--batch", type=click.IntRange(1), default=1, show_default=True, help="Batch for artifacts.")
@click.option("--warmup", type=click.IntRange(0), default=10, show_default=True,
              help="Untimed calls of each artifact first.")
@click.option("--min-time", type=click.FloatRange(0), default=2.0, show_default=True,
              help="Seconds of timed runs per artifact (interleaved A/B).")
@click.option("--allow-env-mismatch", is_flag=True,
              help="Compare results from different devices, threads or batch sizes (warn, not exit 2).")
@click.option("--json", "as_json", is_flag=True, help="Print the decision as JSON on stdout.")
@click.pass_context
def gate_cmd(ctx, baseline, candidate, max_slowdown, max_tail_slowdown, alpha, min_samples, max_growth,
             confirm, runtime, threads, batch, warmup, min_time, allow_env_mismatch, as_json):
    """Decide whether CANDIDATE is slower than BASELINE.

    Regression = median slower beyond --max-slowdown with Mann-Whitney U p < ALPHA, or a p90
    whose bootstrap lower bound is slower beyond --max-tail-slowdown, or a deterministic check
    (size, parameters, FLOPs, validation) failing. Exit 0 pass, 3 regression,
    4 inconclusive (prints the exact rerun that would decide), 2 bad input, including results
    from different devices, threads or batch sizes. To catch a 10% slowdown reliably, set
    --max-slowdown below it (see docs/ci-gate.md).
    """
    result = gate.run_gate(baseline, candidate, alpha=alpha, max_slowdown=max_slowdown,
                           min_samples=min_samples, max_growth=max_growth, confirm=confirm,
                           runtime=runtime, threads=threads, batch=batch, warmup=warmup,
                           min_time=min_time, max_tail_slowdown=max_tail_slowdown,
                           allow_env_mismatch=allow_env_mismatch, progress=lambda m: click.echo(m, err=True))
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        click.echo(_render(result))
    for check in result.checks:
        if check.status == "warn":
            click.echo(f"optkit: warning: {check.reason}", err=True)
    if result.decision == gate.INCONCLUSIVE:
        click.echo(f"optkit: warning: gate inconclusive (exit 4): {result.decided_by}", err=True)
    ctx.exit(result.exit_code)


def _render(result) -> str:
    lines = [f"gate: {result.decision.upper()}", f"  decided by: {result.decided_by}"]
    if result.median_ratio is not None:
        lines.append(f"  median {result.baseline_median_ms:.4g} ms -> {result.candidate_median_ms:.4g} ms "
                     f"(x{result.median_ratio:.3f}), {gate.format_p(result.p_value)}, "
                     f"n={result.n_baseline}/{result.n_candidate}")
    if result.tail:
        t = result.tail
        lines.append(f"  {t['statistic']} {t['baseline_ms']:.4g} ms -> {t['candidate_ms']:.4g} ms "
                     f"(x{t['ratio']:.3f}, lower bound x{t['ratio_lower_bound']:.3f})")
    for c in result.checks:
        numbers = f"{c.baseline} -> {c.candidate}; " if c.baseline is not None or c.candidate is not None else ""
        lines.append(f"  check {c.name}: {c.status}" + (f" ({numbers}{c.reason})" if c.status != "skipped" else ""))
    return "\n".join(lines)
