"""Benchmark and evaluation results as JSON, Markdown tables and a latency plot.

A result is a plain dict (see `optimum.quantization.side_by_side`): `machine`, `variants` (each with
`name` and either measurements or an `error`), and `baseline`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from ..hardware import cpu_label, cpu_summary


def _fmt(value, spec: str = ".2f", missing: str = "–") -> str:
    return missing if value is None else format(value, spec)


def machine_line(result: dict) -> str:
    machine = result["machine"]
    cpu = machine["cpu"]
    versions = ", ".join(f"{k} {v}" for k, v in sorted(result.get("versions", {}).items()))
    masked = f" ISA masked: {machine['isa_masked']}." if machine.get("isa_masked") else ""
    return (
        f"Machine: {cpu_summary(cpu)}, threads: {machine.get('threads') or 'runtime default'}; {versions}.{masked}"
    )


def find_row(variant: dict, batch_size: int, sequence_length: int) -> dict | None:
    return next(
        (r for r in variant.get("latency", []) if r["batch_size"] == batch_size and r["sequence_length"] == sequence_length),
        None,
    )


def benchmark_markdown(result: dict, batch_size: int = 1, sequence_length: int = 128) -> str:
    """Summary at one shape (latency, ratio to the baseline, size, memory, cold start), then every shape's p50."""
    variants = result["variants"]
    baseline = next((v for v in variants if v["name"] == result["baseline"] and "error" not in v), None)
    base_row = find_row(baseline, batch_size, sequence_length) if baseline else None
    lines = [
        machine_line(result),
        "",
        f"Batch {batch_size}, sequence {sequence_length}; speed-up and size are against `{result['baseline']}`, same run.",
        "",
        "| variant | p50 ms | p90 ms | p99 ms | speed-up | throughput /s | weights MB | size ratio | peak RSS MB | cold start s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in variants:
        if "error" in v:
            lines.append(f"| {v['name']} | not run: {v['error']} |" + " |" * 8)
            continue
        row = find_row(v, batch_size, sequence_length)
        speedup = base_row["p50_ms"] / row["p50_ms"] if row and base_row else None
        size_ratio = v["size_bytes"] / baseline["size_bytes"] if baseline and baseline["size_bytes"] else None
        lines.append(
            f"| {v['name']} | {_fmt(row and row['p50_ms'])} | {_fmt(row and row['p90_ms'])} | "
            f"{_fmt(row and row['p99_ms'])} | {_fmt(speedup)}x | {_fmt(row and row['throughput_per_s'], '.1f')} | "
            f"{v['size_bytes'] / 1e6:.1f} | {_fmt(size_ratio)} | {v['peak_rss_bytes'] / 1e6:.0f} | {v['cold_start_s']:.2f} |"
        )
    shapes = sorted({(r["batch_size"], r["sequence_length"]) for v in variants for r in v.get("latency", [])})
    if len(shapes) > 1:
        measured = [v for v in variants if "error" not in v]
        lines += ["", "p50 latency (ms) for every shape:", ""]
        lines.append("| batch × seq | " + " | ".join(v["name"] for v in measured) + " |")
        lines.append("|---|" + "---|" * len(measured))
        for b, s in shapes:
            cells = [_fmt((find_row(v, b, s) or {}).get("p50_ms")) for v in measured]
            lines.append(f"| {b} × {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines + precision_notes(variants)) + "\n"


def evaluation_markdown(result: dict) -> str:
    """One row per variant: its metrics, the change against the baseline, and agreement with it."""
    variants = [v for v in result["variants"] if "error" not in v]
    metric_names = [k for k in (variants[0]["metrics"] if variants else {}) if isinstance(variants[0]["metrics"][k], float)]
    baseline = next((v for v in variants if v["name"] == result["baseline"]), None)
    # A second, larger unlabelled set (see benchmarks/accuracy.py) resolves smaller differences than the labels.
    unlabelled = any("agreement_unlabelled" in v for v in variants)
    header = ["variant", *metric_names, *(f"Δ {m}" for m in metric_names), "agreement with baseline"]
    header += ["agreement on the unlabelled set"] if unlabelled else []
    data = result.get("data", "")
    if unlabelled:
        data += f"; unlabelled set: {result.get('unlabelled_data', '')}"
    lines = [machine_line(result), "", f"Data: {data}; baseline `{result['baseline']}`.", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for v in result["variants"]:
        if "error" in v:
            lines.append(f"| {v['name']} | not run: {v['error']} |" + " |" * (len(header) - 2))
            continue
        values = [_fmt(v["metrics"].get(m), ".3f" if "perplexity" in m else ".2f") for m in metric_names]
        deltas = [_delta(v["metrics"][m], baseline["metrics"][m], m) if baseline else "–" for m in metric_names]
        cells = [*values, *deltas, _format_agreement(v.get("agreement"))]
        cells += [_format_agreement(v.get("agreement_unlabelled"))] if unlabelled else []
        lines.append(f"| {v['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines + precision_notes(result["variants"])) + "\n"


def precision_notes(variants: list[dict]) -> list[str]:
    """What a measured precision choice (OpenVINO's precision="auto") stored for each variant, and why."""
    notes = [f"- `{v['name']}`: precision=\"auto\" stored **{v['precision']['chosen']}**: {v['precision']['reason']}."
             for v in variants if (v.get("precision") or {}).get("requested") == "auto"]
    notes += [f"- `{v['name']}`: OpenVINO computed in **{v['inference_precision']}** (its inference precision on this "
              "CPU; FP32 IRs run in bf16 on AMX/AVX512-BF16 CPUs unless INFERENCE_PRECISION_HINT says f32)."
              for v in variants if v.get("inference_precision") not in (None, "f32")]
    return ["", *notes] if notes else []


def _delta(value: float, reference: float, metric: str) -> str:
    if "perplexity" in metric:  # a perplexity budget is relative ("within +3%")
        relative = f" ({100 * (value / reference - 1):+.1f}%)" if reference else ""
        return f"{value - reference:+.3f}{relative}"
    return f"{value - reference:+.2f}"


def _format_agreement(agreement: dict | None) -> str:
    if not agreement:
        return "–"
    parts = []
    if agreement.get("prediction_agreement") is not None:
        parts.append(f"{agreement['prediction_agreement']:.2%} same prediction")
    if agreement.get("top1_agreement") is not None:
        parts.append(f"top-1 {agreement['top1_agreement']:.2%}")
    if agreement.get("kl_divergence") is not None:
        parts.append(f"KL {agreement['kl_divergence']:.2e}")
    if agreement.get("cosine_mean") is not None:
        parts.append(f"cosine {agreement['cosine_mean']:.4f}")
    return ", ".join(parts) or "–"


def plot_latency(result: dict, path: str | Path) -> Path:
    """PNG: p50 latency against sequence length, one line per variant, one panel per batch size."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    measured = [v for v in result["variants"] if "error" not in v]
    batch_sizes = sorted({r["batch_size"] for v in measured for r in v["latency"]})
    figure, axes = plt.subplots(1, len(batch_sizes), figsize=(6 * len(batch_sizes), 4.5), squeeze=False)
    for axis, batch_size in zip(axes[0], batch_sizes):
        for v in measured:
            rows = sorted((r for r in v["latency"] if r["batch_size"] == batch_size), key=lambda r: r["sequence_length"])
            axis.plot([r["sequence_length"] for r in rows], [r["p50_ms"] for r in rows], marker="o", label=v["name"])
        axis.set(xscale="log", yscale="log", xlabel="sequence length", ylabel="p50 latency (ms)", title=f"batch {batch_size}")
        axis.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize="small")
    figure.suptitle(f"{result.get('model', '')} — {cpu_label(result['machine']['cpu'])}", fontsize="small")
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def write_reports(result: dict, output_dir: str | Path, stem: str, markdown: str | None = None) -> dict[str, Path]:
    """Write `<stem>.json`, `<stem>.md` (and `<stem>.png` for benchmarks) into `output_dir`, all or nothing.

    `markdown` replaces the table this module would render (results of other kinds bring their own)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    is_benchmark = result.get("kind") == "benchmark"
    names = {"json": f"{stem}.json", "md": f"{stem}.md", **({"png": f"{stem}.png"} if is_benchmark else {})}
    # Write everything into a temporary folder first, then move the files in: a failure (say, in plotting)
    # leaves earlier reports as they were.
    staging = Path(tempfile.mkdtemp(prefix=f".{stem}.tmp-", dir=output_dir))
    try:
        (staging / names["json"]).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        if markdown is None:
            markdown = benchmark_markdown(result) if is_benchmark else evaluation_markdown(result)
        (staging / names["md"]).write_text(markdown, encoding="utf-8")
        if is_benchmark:
            plot_latency(result, staging / names["png"])
        written = {}
        for key, name in names.items():
            (staging / name).replace(output_dir / name)
            written[key] = output_dir / name
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written
