"""report.json -> what people read: terminal table, Markdown, CSV, a self-contained HTML page, plots.

report.json is the single source: every rendering is computed from it and from nothing else, so
a report can be re-rendered on another machine long after the run. Two documents are accepted:

- an `optimize` report: {"schema", "env", "variants": [{id, name, parent, steps, params, accuracy,
  train_time_per_epoch_s, inference_ms_per_step, status, reason, artifacts: [ARTIFACT...]}]}
  rendered in Lesson 14's layout: variants as columns; rows Parameters, Accuracy, Train
  time/epoch, Inference time/step, then size, gzip size and latency per artifact and runtime;
- a `bench` report: {"schema", "env", "results": [...]}, one row per (artifact, runtime).

Sizes are decimal (1 MB = 1,000,000 bytes), latencies are p50 in milliseconds. A cell whose
artifact was skipped or failed shows that status and its reason; a cell with nothing to say is "–".
Nothing here imports TensorFlow; matplotlib is imported only to draw plots.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

from optkit import verdicts
from optkit.errors import UserError

FORMATS = ("table", "md", "csv", "html")
DASH = "–"
# Table and Markdown cells are cut here (the CSV and HTML keep the whole reason).
MAX_CELL = 40

FORMAT_LABELS = {"tflite": "TFLite", "onnx": "ONNX", "keras": "Keras", "h5": "Keras h5",
                 "saved_model": "SavedModel", "coreml": "Core ML", "mlpackage": "Core ML",
                 "tensorrt": "TensorRT", "engine": "TensorRT"}


# --------------------------------------------------------------------------------------------
# Loading


def load(path: str) -> dict:
    """Read and check a report.json; problems are one-line UserErrors."""
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable JSON report ({exc})") from None
    check(doc, path)
    return doc


def check(doc, where: str = "report") -> None:
    if not isinstance(doc, dict) or not ("variants" in doc or "results" in doc):
        raise UserError(f"{where}: not an optkit report (needs 'variants' or 'results')")
    if doc.get("schema", 1) != 1:
        raise UserError(f"{where}: report schema {doc.get('schema')} is newer than this optkit reads (1)")
    rows = doc.get("variants", doc.get("results"))
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise UserError(f"{where}: 'variants'/'results' must be a list of objects")


# --------------------------------------------------------------------------------------------
# Cell formatting


def fmt_bytes(n) -> str:
    if n is None:
        return DASH
    n = float(n)
    if n < 1000:
        return f"{n:.0f} B"
    if n < 1e6:
        return f"{n / 1e3:.1f} KB"
    return f"{n / 1e6:.2f} MB"


def fmt_ms(v) -> str:
    if v is None:
        return DASH
    return f"{v:.3f} ms" if v < 1 else f"{v:.2f} ms"


def fmt_pct(v) -> str:
    return DASH if v is None else f"{100.0 * v:.2f}%"


def fmt_int(v) -> str:
    return DASH if v is None else f"{int(v):,}"


def fmt_s(v) -> str:
    return DASH if v is None else f"{v:.2f} s"


def status_cell(status: str, reason: str = "") -> str:
    return f"{status}: {reason}" if reason else status


def _shorten(text: str, limit: int = MAX_CELL) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def fmt_metric(record: dict, with_n: bool = True) -> str:
    """Accuracy with the number of labelled samples behind it (unless the row title says it);
    mIoU first for segmentation."""
    if record.get("accuracy") is None:
        return DASH
    n = f" (n={record['accuracy_n']})" if with_n and record.get("accuracy_n") is not None else ""
    if record.get("miou") is not None:
        return f"mIoU {fmt_pct(record['miou'])}, pixel {fmt_pct(record['accuracy'])}{n}"
    return f"{fmt_pct(record['accuracy'])}{n}"


def artifact_label(artifact: dict) -> str:
    """'TFLite int8', 'ONNX', ... : format plus its quantization when there is one."""
    fmt = artifact.get("format") or "?"
    label = FORMAT_LABELS.get(fmt, fmt)
    q = artifact.get("quantize")
    return f"{label} {q}" if q and q != "none" else label


def _latency(artifact: dict) -> dict:
    return artifact.get("latency_ms") or {}


# --------------------------------------------------------------------------------------------
# The one grid every text rendering draws


def grid(report: dict) -> Tuple[List[str], List[List[str]]]:
    """(header, rows) of full-length cell texts: Lesson 14's layout for an optimize report,
    one row per result for a bench report."""
    check(report)
    if "variants" in report:
        return _variant_grid(report["variants"], report.get("selected"))
    return _results_grid(report["results"])


def _accuracy_title(variants: List[dict]) -> str:
    """"Accuracy (n=36 test images)" when every variant was scored on the same images: a reader
    needs the n to know what a point is worth (one of 36 images is 2.8 points)."""
    ns = {v.get("accuracy_n") or (v.get("details") or {}).get("accuracy_n") for v in variants
          if v.get("accuracy") is not None}
    return f"Accuracy (n={ns.pop()} test images)" if len(ns) == 1 and None not in ns else "Accuracy"


def _verdict_cell(v: dict) -> str:
    verdict = (v.get("details") or {}).get("verdict")
    if not verdict:
        return DASH
    drop = verdict.get("drop_points")
    numbers = "" if drop is None else f" ({-drop:+.1f} pts val)"
    return ("kept" if verdict.get("kept") else "rejected") + numbers


def _variant_grid(variants: List[dict], selected: Optional[dict] = None) -> Tuple[List[str], List[List[str]]]:
    """Lesson 14's layout. A variant or artifact that did not run says why in its first cell
    (`failed: reason`) and just its status in the cells below."""
    header = [""] + [v.get("name") or v.get("id") or f"#{i}" for i, v in enumerate(variants)]

    def variant_row(title, fn, first=False):
        cells = []
        for v in variants:
            status = v.get("status", "ok")
            value = fn(v)
            if status != "ok" and value == DASH:
                value = status_cell(status, v.get("reason", "")) if first else status
            cells.append(value)
        return [title] + cells

    rows = [
        variant_row("Parameters", lambda v: fmt_int(v.get("params")), first=True),
    ]
    # Shown when a step reports multiply-adds (channel_prune): then they are the point of the run.
    if any("multiply_adds_after" in (s.get("info") or {}) for v in variants for s in v.get("steps") or []):
        rows.append(variant_row("Multiply-adds", lambda v: fmt_int((v.get("details") or {}).get("multiply_adds"))))
    accuracy_title = _accuracy_title(variants)
    shared_n = "n=" in accuracy_title   # then the cells need not repeat it
    rows += [
        variant_row(accuracy_title, lambda v: fmt_metric(v, with_n=not shared_n)),
        variant_row("Train time/epoch", lambda v: fmt_s(v.get("train_time_per_epoch_s"))),
        variant_row("Inference time/step", lambda v: fmt_ms(v.get("inference_ms_per_step"))),
    ]
    if any((v.get("details") or {}).get("verdict") for v in variants):
        rows.append(["Step kept?"] + [_verdict_cell(v) for v in variants])
    if selected:
        rows.append(["Selected"] + [f"◀ {selected['artifact']}" if v.get("id") == selected.get("variant_id")
                                    else DASH for v in variants])
    # Artifact groups (format + quantization): formats in order of first appearance, each
    # format's quantizations together, so "TFLite int8" sits next to "TFLite".
    seen: List[Tuple[str, str]] = []
    for v in variants:
        for a in v.get("artifacts") or []:
            key = (a.get("format") or "?", artifact_label(a))
            if key not in seen:
                seen.append(key)
    fmt_order = list(dict.fromkeys(f for f, _ in seen))
    labels = [label for f in fmt_order for ff, label in seen if ff == f]
    runtimes: Dict[str, List[str]] = {label: [] for label in labels}
    with_accuracy = set()
    for v in variants:
        for a in v.get("artifacts") or []:
            rt = _latency(a).get("runtime")
            if rt and rt not in runtimes[artifact_label(a)]:
                runtimes[artifact_label(a)].append(rt)
            if a.get("accuracy") is not None:
                with_accuracy.add(artifact_label(a))

    def artifact_row(title, label, fn, runtime=None, first=False):
        cells = []
        for v in variants:
            found = [a for a in v.get("artifacts") or [] if artifact_label(a) == label
                     and (runtime is None or _latency(a).get("runtime") in (runtime, None))]
            if not found:
                cells.append(DASH)
                continue
            a = found[0]
            status = a.get("status", "ok")
            if status == "unverified":   # it ran: show its numbers, and say it is not proven
                cells.append(f"{fn(a)} (unverified)" if first else fn(a))
            elif status != "ok":
                cells.append(status_cell(status, a.get("reason", "")) if first else status)
            else:
                cells.append(fn(a))
        return [title] + cells

    for label in labels:
        rows.append(artifact_row(f"{label} size", label, lambda a: fmt_bytes(a.get("size_bytes")),
                                 first=True))
        rows.append(artifact_row(f"{label} gzip size", label, lambda a: fmt_bytes(a.get("gzip_bytes"))))
        if label in with_accuracy:
            rows.append(artifact_row(f"{label} accuracy", label, fmt_metric))
        for rt in runtimes[label] or [None]:
            title = f"{label} latency ({rt})" if rt else f"{label} latency"
            rows.append(artifact_row(title, label, lambda a: fmt_ms(_latency(a).get("p50")), rt))
    return header, rows


RESULT_COLUMNS = ["Artifact", "Runtime", "Threads", "Batch", "p50", "p90", "p99", "Mean ± std",
                  "n", "Load", "Cold", "Peak RSS", "Size", "Gzip size", "Accuracy", "Status"]


def _results_grid(results: List[dict]) -> Tuple[List[str], List[List[str]]]:
    rows = []
    for r in results:
        lat = r.get("latency_ms") or {}
        ok = r.get("status", "ok") == "ok"
        mean_std = f"{lat['mean']:.3f} ± {lat.get('std', 0.0):.3f} ms" if ok and "mean" in lat else DASH
        rss = r.get("peak_rss_mb")
        rows.append([
            os.path.basename(str(r.get("path", "")).rstrip("/")) or DASH,
            r.get("runtime") or DASH,
            DASH if r.get("threads") is None else str(r["threads"]),
            DASH if r.get("batch") is None else str(r["batch"]),
            fmt_ms(lat.get("p50")), fmt_ms(lat.get("p90")), fmt_ms(lat.get("p99")), mean_std,
            DASH if lat.get("n") is None else str(lat["n"]),
            fmt_ms(r.get("load_ms")), fmt_ms(r.get("cold_ms")),
            DASH if rss is None else f"{rss:.1f} MB",
            fmt_bytes(r.get("size_bytes")), fmt_bytes(r.get("gzip_bytes")),
            _quality_cell(r),
            status_cell(r.get("status", "ok"), r.get("reason", "")),
        ])
    return list(RESULT_COLUMNS), rows


def _quality_cell(r: dict) -> str:
    """Accuracy on labelled data; else top-1 agreement with the reference artifact."""
    if r.get("accuracy") is not None:
        return fmt_metric(r)
    agree = r.get("agreement") or {}
    if agree.get("is_reference"):
        return "reference"
    if agree.get("top1_agreement") is not None:
        return f"agree {fmt_pct(agree['top1_agreement'])}"
    return DASH


def env_summary(report: dict) -> str:
    env = report.get("env") or {}
    parts = []
    if env.get("cpu_model"):
        parts.append(env["cpu_model"])
    if env.get("cpu_count"):
        parts.append(f"{env['cpu_count']} cores")
    if env.get("system"):
        parts.append(f"{env['system']} {env.get('release', '')}".strip())
    if env.get("python"):
        parts.append(f"Python {env['python']}")
    if env.get("threads") is not None:
        parts.append(f"threads {env['threads']}")
    pkgs = env.get("packages") or {}
    if pkgs:
        parts.append(", ".join(f"{k} {v}" for k, v in sorted(pkgs.items())))
    return " · ".join(parts)


# --------------------------------------------------------------------------------------------
# Renderings


def footnotes(report: dict) -> List[str]:
    """What the per-variant rows measure, from the report itself: Lesson 14's table gives per-step
    and per-epoch figures, and a reader comparing with it needs the batch, steps and runtime."""
    variants = report.get("variants") or []
    plan, data = report.get("plan") or {}, report.get("data") or {}
    tf_version = ((report.get("env") or {}).get("packages") or {}).get("tensorflow")
    runtime = f"TensorFlow {tf_version}" if tf_version else "TensorFlow"
    notes = []
    if any(v.get("train_time_per_epoch_s") is not None for v in variants):
        n, batch = data.get("train"), plan.get("batch_size")
        known = isinstance(n, int) and isinstance(batch, int) and batch > 0
        what = f"the {n} training images at batch {batch} = {-(-n // batch)} steps" if known else "the training images"
        notes.append(f"Train time/epoch: wall time of one pass over {what}, plus the validation pass; median of "
                     f"the epochs after the first (which holds tracing/compilation); {runtime}, CPU.")
    inference = next(((v.get("details") or {}).get("inference") for v in variants
                      if (v.get("details") or {}).get("inference")), None)
    if inference:
        notes.append(f"Inference time/step: median ms of one forward pass on a batch of {inference.get('batch', '?')} "
                     f"images through {inference.get('path', 'Keras')}; {runtime}, CPU. Artifact latencies are "
                     "per image (batch 1) on the runtime named in their row.")
    if any((v.get("details") or {}).get("accuracy_n") for v in variants):
        notes.append("Accuracy: top-1 on the n held-out test images in the row's title (never trained on); "
                     "one image is 100/n points.")
    return notes


def lesson14_table(report: dict) -> str:
    """The terminal table: columns padded, first column left-aligned, numbers right-aligned."""
    header, rows = grid(report)
    rows = [[_shorten(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]

    def line(cells):
        out = [cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "  ".join(out).rstrip()

    rule = "  ".join("-" * w for w in widths)
    text = [line(header), rule] + [line(r) for r in rows]
    notes = footnotes(report)
    if notes:
        text += [""] + [f"* {n}" for n in notes]
    summary = env_summary(report)
    if summary:
        text += ["", f"env: {summary}"]
    return "\n".join(text) + "\n"


def to_markdown(report: dict) -> str:
    header, rows = grid(report)

    def esc(c):
        return _shorten(c).replace("|", "\\|")

    out = ["# optkit report", ""]
    summary = env_summary(report)
    if summary:
        out += [f"Measured on: {summary}", ""]
    out.append("| " + " | ".join(esc(c) for c in header) + " |")
    out.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    out += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    notes = footnotes(report)
    if notes:
        out += [""] + [f"- {n}" for n in notes]
    sections = optimize_sections(report)
    if sections:
        out += [""] + sections
    return "\n".join(out).rstrip("\n") + "\n"


def to_csv(report: dict) -> str:
    header, rows = grid(report)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#222}
table{border-collapse:collapse;margin:1rem 0}
th,td{border:1px solid #ccc;padding:.35rem .6rem;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}
thead th{background:#f0f3f7}
td.status{color:#a33;white-space:normal;max-width:18rem;text-align:left}
.env{color:#555;font-size:.9rem}
.scroll{overflow-x:auto}
figure{display:inline-block;margin:1rem 2rem 1rem 0}
figcaption{color:#555;font-size:.9rem}
"""


def to_html(report: dict, plots: bool = True) -> str:
    """One self-contained page: inline CSS, the table, plots embedded as base64 PNG."""
    header, rows = grid(report)
    e = html.escape
    head = "".join(f"<th>{e(c)}</th>" for c in header)
    body = []
    for r in rows:
        cells = [f"<th scope=\"row\">{e(r[0])}</th>"]
        for c in r[1:]:
            cls = ' class="status"' if c.startswith(("skipped", "failed")) else ""
            cells.append(f"<td{cls}>{e(c)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    figures = []
    if plots:
        for title, png in plot_pngs(report):
            data = base64.b64encode(png).decode("ascii")
            figures.append(f'<figure><img alt="{e(title)}" src="data:image/png;base64,{data}">'
                           f"<figcaption>{e(title)}</figcaption></figure>")
    summary = env_summary(report)
    sections = optimize_sections(report)
    kind = "Variants" if "variants" in report else "Benchmark results"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<title>optkit report</title>"
        f"<style>{_CSS}</style></head><body>\n"
        "<h1>optkit report</h1>\n"
        + (f'<p class="env">Measured on: {e(summary)}</p>\n' if summary else "")
        + f"<h2>{kind}</h2>\n"
        '<div class="scroll">'
        f'<table id="report-table"><thead><tr>{head}</tr></thead>\n<tbody>\n'
        + "\n".join(body)
        + "\n</tbody></table></div>\n"
        + "".join(f'<p class="footnote">{e(n)}</p>\n' for n in footnotes(report))
        + ("<h2>Plots</h2>\n" + "\n".join(figures) + "\n" if figures else "")
        + (f'<section id="optimize">{markdown_html(chr(10).join(sections))}</section>\n' if sections else "")
        + "<details><summary>report.json</summary><pre>"
        + e(json.dumps(_without_samples(report), indent=1))
        + "</pre></details>\n</body></html>\n"
    )


def markdown_html(text: str) -> str:
    """Markdown (the notes optimize writes: headings, lists, `code`) as an HTML fragment.

    The text is escaped first, so a layer name or an error message holding `<` shows as
    written instead of becoming markup. Without the `markdown` package (the `report` extra)
    the text is shown as it is, preformatted."""
    escaped = html.escape(text, quote=False)
    try:
        import markdown
    except ImportError:
        return f"<pre>{escaped}</pre>"
    return markdown.markdown(escaped, output_format="html")


def _without_samples(report: dict) -> dict:
    """The embedded JSON, minus raw samples (thousands of numbers nobody reads in a page)."""
    doc = json.loads(json.dumps(report))
    for r in doc.get("results", []):
        if "samples_ms" in r:
            r["samples_ms"] = f"{len(r['samples_ms'])} samples"
    return doc


# --------------------------------------------------------------------------------------------
# optimize's own sections (search, notes, failures) and its terminal summary


def optimize_summary(report: dict) -> str:
    """`optkit optimize`'s terminal summary: Lesson 14's layout (variants as columns), then the
    search result, the int8 layers worst first and what failed."""
    text = lesson14_table(report)
    search = report.get("search")
    if search:
        text += "\n\n" + search_summary(search)
    for label, q in quantized_artifacts(report):
        text += f"\n\nint8 layers, worst first ({label}):\n" + quant_table(q)
    rejected = [v for v in report.get("variants", []) if v.get("status") == verdicts.REJECTED]
    if rejected:
        text += "\n\nrejected:\n" + "\n".join(f"  {v['name']}: {v.get('reason', '')}" for v in rejected)
    if report.get("failures"):
        text += "\n\nfailed:\n" + "\n".join(f"  {line}" for line in report["failures"])
    if "selected" in report:
        text += "\n\n" + verdicts.closing_line(report["selected"])
    return text


def search_summary(search: dict) -> str:
    """The search's goal, its best candidate and the Pareto set, one line each."""
    goal = search["goal"]
    best = search.get("best")
    lines = [f"search: accuracy drop <= {goal['max_accuracy_drop']:g} points, best by {goal['objective']}; "
             f"{search['trials']} candidate(s) in {search['elapsed_s']:.0f} s"
             + (f" (stopped: {search['stopped']})" if search.get("stopped") else "")]
    if best:
        met = "meets the goal" if search.get("met") else "best so far: NO candidate met the goal"
        lines.append(f"best: {best['label']} ({met}; accuracy {_opt_pct(best.get('accuracy'))}, "
                     f"{_opt_num(best.get('latency_ms'))} ms, {_opt_num(best.get('gzip_bytes'))} B gzip)")
    lines.append("pareto (size, latency, accuracy): " + ", ".join(p["label"] for p in search.get("pareto", [])))
    lines += [f"not pursued: {why}" for why in search.get("skipped", [])]
    return "\n".join(lines)


def _opt_pct(x):
    return "-" if x is None else f"{100 * x:.1f}%"


def _opt_num(x):
    return "-" if x is None else (f"{x:.3g}" if isinstance(x, float) else f"{x:,}")


def optimize_sections(report: dict) -> List[str]:
    """Markdown lines of an optimize report's own sections: search, notes, failures."""
    lines = []
    if report.get("search"):
        lines += ["## Search", ""] + [f"- {line}" for line in search_summary(report["search"]).splitlines()] + [""]
    if "selected" in report:
        lines += ["## Selected", "", verdicts.closing_line(report["selected"]), ""]
    rejected = [v for v in report.get("variants", []) if v.get("status") == verdicts.REJECTED]
    if rejected:
        lines += ["## Rejected", ""] + [f"- {v['name']}: {v.get('reason', '')}" for v in rejected] + [""]
    if report.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    if report.get("failures"):
        lines += ["## Failed", ""] + [f"- {f}" for f in report["failures"]] + [""]
    return lines


def render(report: dict, fmt: str) -> str:
    """report.json as `fmt`: table | md | csv | html."""
    renderers = {"table": lesson14_table, "md": to_markdown, "csv": to_csv, "html": to_html}
    key = {"markdown": "md", "txt": "table", "text": "table", "htm": "html"}.get(fmt, fmt)
    if key not in renderers:
        raise UserError(f"unknown report format '{fmt}'; use one of {', '.join(FORMATS)}")
    return renderers[key](report)


def write_text(text: str, path: str) -> str:
    """Atomic write: a temp file in the same directory, then os.replace (never a half file)."""
    from optkit import files

    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UserError(f"{path}: directory {directory} does not exist")
    return files.write_text(path, text)


# --------------------------------------------------------------------------------------------
# Plots


def points(report: dict) -> List[dict]:
    """One point per artifact (or bench result) that ran: label, runtime, size, latency, accuracy."""
    pts = []
    if "variants" in report:
        for v in report["variants"]:
            for a in v.get("artifacts") or []:
                lat = _latency(a)
                if a.get("status", "ok") != "ok" or lat.get("p50") is None:
                    continue
                pts.append({"label": f"{v.get('name') or v.get('id')} · {artifact_label(a)}",
                            "runtime": lat.get("runtime") or "?", "size": a.get("size_bytes"),
                            "gzip": a.get("gzip_bytes"), "latency": lat["p50"],
                            # the artifact's own accuracy when measured, else its variant's
                            "accuracy": a["accuracy"] if a.get("accuracy") is not None
                            else v.get("accuracy")})
    else:
        for r in report["results"]:
            lat = r.get("latency_ms") or {}
            if r.get("status", "ok") != "ok" or lat.get("p50") is None:
                continue
            name = os.path.basename(str(r.get("path", "")).rstrip("/"))
            pts.append({"label": f"{name} · {r.get('runtime') or '?'}",
                        "runtime": r.get("runtime") or "?", "size": r.get("size_bytes"),
                        "gzip": r.get("gzip_bytes"), "latency": lat["p50"],
                        "accuracy": r.get("accuracy")})
    return pts


def pareto_front(xy: Sequence[Tuple[float, float]]) -> List[int]:
    """Indices of the points no other point beats on both axes (smaller is better on both),
    ordered by x. A point equal to another on both axes is kept once (the first)."""
    order = sorted(range(len(xy)), key=lambda i: (xy[i][0], xy[i][1], i))
    front, best_y = [], float("inf")
    for i in order:
        if xy[i][1] < best_y:
            front.append(i)
            best_y = xy[i][1]
    return front


def _figures(report: dict):
    """(title, file stem, matplotlib Figure) for each plot that has points to show."""
    # Figure without pyplot: no GUI backend, no global state changed in the caller's process.
    from matplotlib.figure import Figure

    pts = points(report)
    figs = []
    sized = [p for p in pts if p["size"]]
    if sized:
        figs.append(("Latency vs size, Pareto front marked", "latency_vs_size", _front_figure(
            Figure, sized, x=lambda p: p["size"] / 1e6, y=lambda p: p["latency"], higher_y_better=False,
            log_y=True, xlabel="file size (MB)", ylabel="latency p50 (ms)",
            title="Latency vs size (lower left is better)")))
    scored = [p for p in pts if p["accuracy"] is not None]
    if scored:
        figs.append(("Accuracy vs latency", "accuracy_vs_latency", _front_figure(
            Figure, scored, x=lambda p: p["latency"], y=lambda p: 100 * p["accuracy"], higher_y_better=True,
            log_y=False, xlabel="latency p50 (ms)", ylabel="accuracy (%)",
            title="Accuracy vs latency (upper left is better)")))
    for label, q in quantized_artifacts(report):
        figs.append((f"Per-layer int8 error: {label}", "quant_layers_" + _stem(label), _quant_figure(Figure, label, q)))
    # A bench report keeps raw samples: show their spread, since on a shared machine the tail
    # (p99) can be tens of times the median and a single number hides it.
    sampled = [r for r in report.get("results", [])
               if r.get("status", "ok") == "ok" and r.get("samples_ms")]
    if sampled:
        fig = Figure(figsize=(6.4, 0.6 + 0.45 * len(sampled) + 1.2), dpi=100)
        ax = fig.add_subplot()
        labels = [f"{os.path.basename(str(r.get('path', '')).rstrip('/'))} · {r.get('runtime')}"
                  for r in sampled]
        ax.boxplot([r["samples_ms"] for r in sampled], vert=False, whis=(1, 99), showfliers=False)
        ax.set_yticks(range(1, len(sampled) + 1), labels, fontsize=8)
        ax.invert_yaxis()  # first result on top, as in the table
        _log_if_spread(ax, [min(r["samples_ms"]) for r in sampled] + [max(r["samples_ms"]) for r in sampled], [])
        ax.set_xlabel("latency per call (ms); box = p25-p75, whiskers = p1-p99")
        ax.set_title("Latency distribution")
        ax.grid(True, axis="x", alpha=0.3)
        fig.tight_layout()
        figs.append(("Latency distribution (raw samples)", "latency_distribution", fig))
    return figs


def quantized_artifacts(report: dict) -> List[Tuple[str, dict]]:
    """(label, quantization record) of every artifact with a per-layer diagnosis (--quant-report)."""
    out = []
    arts = [(None, a) for a in report.get("artifacts", [])]
    arts += [(v.get("name"), a) for v in report.get("variants", []) for a in v.get("artifacts", [])]
    for variant, a in arts:
        q = a.get("quantization") or {}
        if q.get("layers"):
            out.append(((f"{variant} · " if variant else "") + artifact_label(a), q))
    return out


def quant_table(q: dict, top: int = 8) -> str:
    """The worst `top` layers of one int8 artifact, as a short terminal table."""
    rows = [("layer", "op", "SNR dB", "channel SNR dB", "RMSE", "")]
    kept = set(q.get("float_layers") or [])
    for r in q.get("layers", [])[:top]:
        rows.append((r["name"], r["op"], _num(r.get("snr_db")), _num(r.get("channel_snr_db")),
                     _num(r.get("rmse"), "{:.3g}"), "kept float" if r["name"] in kept else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    more = len(q.get("layers", [])) - top
    if more > 0:
        lines.append(f"... {more} more layer(s) in the JSON")
    cal = q.get("calibration") or {}
    lines.append(f"calibration: {cal.get('method')} on {cal.get('samples')} samples; "
                 f"float layers: {', '.join(q.get('float_layers') or []) or 'none'}")
    goal, cost = q.get("goal"), q.get("cost")
    if goal:
        lines.append(f"goal: {goal['measure']} within {goal['max_drop']:g} points of float "
                     f"({goal['baseline']:.2f}); reached {goal['drop']:+.2f}")
    if cost:
        lines.append(f"cost of the float layers: {fmt_bytes(cost.get('full_int8_bytes'))} -> {fmt_bytes(cost.get('bytes'))}, "
                     f"{fmt_ms(cost.get('full_int8_ms'))} -> {fmt_ms(cost.get('ms'))} (batch 1, 1 thread)")
    return "\n".join(lines)


def _num(v, spec="{:.1f}"):
    return "-" if v is None else spec.format(v)


def _stem(label: str) -> str:
    """'baseline · TFLite int8' -> 'baseline_tflite_int8' (a file name)."""
    import re

    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


def _quant_figure(Figure, label, q):
    """Horizontal bars, worst layer on top: whole-tensor and median per-channel SNR."""
    layers = q["layers"][:20]
    fig = Figure(figsize=(6.4, 1.2 + 0.32 * len(layers)), dpi=100)
    ax = fig.add_subplot()
    ys = list(range(len(layers)))
    snr = [r.get("snr_db") if r.get("snr_db") is not None else 0.0 for r in layers]
    ch = [r.get("channel_snr_db") if r.get("channel_snr_db") is not None else float("nan") for r in layers]
    ax.barh([y - 0.2 for y in ys], snr, height=0.4, label="SNR (tensor)")
    ax.barh([y + 0.2 for y in ys], ch, height=0.4, label="SNR (median channel)")
    kept = set(q.get("float_layers") or [])
    ax.set_yticks(ys, [r["name"] + (" (float)" if r["name"] in kept else "") for r in layers], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("signal-to-quantization-noise ratio (dB); lower is worse")
    ax.set_title(f"Per-layer int8 error: {label}", fontsize=9)
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _front_figure(Figure, pts, *, x, y, higher_y_better, log_y, xlabel, ylabel, title):
    """One scatter per runtime, labelled points, and the Pareto front (smaller x is always better;
    y is negated for the front when higher is better, so pareto_front keeps one convention)."""
    fig = Figure(figsize=(6.4, 4.4), dpi=100)
    ax = fig.add_subplot()
    for rt in sorted({p["runtime"] for p in pts}):
        mine = [p for p in pts if p["runtime"] == rt]
        ax.scatter([x(p) for p in mine], [y(p) for p in mine], label=rt, s=36)
    xy = [(x(p), y(p)) for p in pts]
    sign = -1 if higher_y_better else 1
    front = pareto_front([(a, sign * b) for a, b in xy])
    ax.plot([xy[i][0] for i in front], [xy[i][1] for i in front], "--", color="crimson",
            marker="o", markerfacecolor="none", markersize=12, label="Pareto front")
    for p, (a, b) in zip(pts, xy):
        ax.annotate(p["label"], (a, b), fontsize=7, xytext=(4, 4), textcoords="offset points")
    _log_if_spread(ax, [a for a, _ in xy], [b for _, b in xy] if log_y else [])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _log_if_spread(ax, xs, ys, spread=20.0):
    """Log axes when values span more than `spread`x: model.predict at 200 ms and LiteRT at
    0.1 ms on one linear axis would squash every fast runtime onto zero."""
    for values, set_scale in ((xs, ax.set_xscale), (ys, ax.set_yscale)):
        positive = [v for v in values if v and v > 0]
        if positive and max(positive) / min(positive) > spread:
            set_scale("log")


def plot_pngs(report: dict) -> List[Tuple[str, bytes]]:
    """[(title, PNG bytes)]; empty when matplotlib is not installed (the table still renders)."""
    try:
        figs = _figures(report)
    except ImportError:
        return []
    out = []
    for title, _, fig in figs:
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        out.append((title, buf.getvalue()))
    return out


def write_plots(report: dict, out_dir: str) -> List[str]:
    """Write latency_vs_size.png, accuracy_vs_latency.png and (bench reports with raw samples)
    latency_distribution.png to `out_dir`, those with something to show."""
    try:
        figs = _figures(report)
    except ImportError:
        raise UserError("plots need matplotlib: pip install 'optkit[report]'") from None
    from optkit import files

    files.prepare_dir(out_dir)
    paths = []
    for _, stem, fig in figs:
        path = os.path.join(out_dir, f"{stem}.png")
        with files.staging(path) as staged:
            fig.savefig(staged.path, format="png")
        paths.append(path)
    return paths
