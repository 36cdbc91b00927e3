"""The accuracy-aware search report as Markdown: for the report file and for the model card. Formatting only."""

from __future__ import annotations

from typing import Any

REPORT_DETAILS_KEY = "auto_search"  # the recipe `details` key holding the search report


def _number(value, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _decision(trial: dict[str, Any]) -> str:
    text = f"{trial['status']}: {trial['reason']}" if trial.get("reason") else trial.get("status", "")
    return text.replace("|", "\\|")


def _call_pattern(pause_s: float) -> str:
    return f", each call after a {pause_s:g} s idle pause" if pause_s else ", calls back to back"


def search_report_markdown(report: dict[str, Any]) -> str:
    """Outcome, reference numbers, then every trial with its metric, latency, size and decision."""
    fp32 = report.get("fp32") or {}
    metric = report.get("metric", "metric")
    lines = [
        f"**{report.get('explanation', '')}**",
        "",
        f"- Metric: {metric} on {report.get('eval_dataset') or 'the evaluation data'}; FP32 {_number(fp32.get('metric'))}, "
        f"tolerance {report.get('tolerance')} (accept ≥ {_number(report.get('threshold'))}).",
        f"- Latency: p50 at batch {report.get('latency_shape', ['?', '?'])[0]} × sequence "
        f"{report.get('latency_shape', ['?', '?'])[1]}, measured in the search process as each trial ends"
        f"{_call_pattern(report.get('latency_pause_s') or 0)}; differences under "
        f"{100 * report.get('latency_noise', 0):.0f}% count as noise and the expected speed order decides.",
        f"- {len(report.get('trials', []))} trials in {_number(report.get('elapsed_s'), 0)} s"
        + (f"; stopped early: {report['stopped']}." if report.get("stopped") else "."),
    ]
    remeasure = report.get("remeasure") or {}
    if remeasure.get("finalists"):
        times = ", ".join(f"{f['name']} {f['latency_ms_remeasured']:.2f} ms (in search {_number(f['latency_ms_search'])})"
                          for f in remeasure["finalists"])
        verdict = (f"it overturned the in-search choice {remeasure['in_search_choice']}" if remeasure.get("changed_choice")
                   else "it confirmed the in-search choice")
        lines.append(f"- Re-measured side by side ({remeasure['rounds']} interleaved rounds, median; accepted trials within "
                     f"{100 * remeasure['margin']:.0f}% of the fastest or expected at least as fast as the choice): {times}; "
                     f"FP32 {remeasure['fp32_ms']:.2f} ms; {verdict}.")
    elif remeasure.get("skipped"):
        lines.append(f"- No side-by-side re-measure: {remeasure['skipped']}.")
    chosen = report.get("chosen")
    if chosen and chosen.get("fallback"):
        lines.append(f"- Kept in FP32 by the search: {', '.join(f'`{u}`' for u in chosen['fallback'])}.")
    if report.get("sensitivity"):
        ranked = ", ".join(f"`{s['unit']}` ({s['gain']:+.2f})" for s in report["sensitivity"][:5])
        lines.append(f"- Most sensitive units of `{report.get('sensitivity_of')}` (metric gain when kept FP32 alone): {ranked}.")
    lines += [
        "",
        f"| # | trial | phase | backend | FP32 fallback | {metric} | Δ vs FP32 | p50 ms | speed-up | re-measured ms | size MB | "
        "decision |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for number, trial in enumerate(report.get("trials", []), 1):
        delta = None if trial.get("metric") is None or fp32.get("metric") is None else trial["metric"] - fp32["metric"]
        speedup = (
            None if not trial.get("latency_ms") or not fp32.get("latency_ms") else fp32["latency_ms"] / trial["latency_ms"]
        )
        fallback = ", ".join(trial.get("fallback") or []) or "–"
        size = None if trial.get("size_bytes") is None else trial["size_bytes"] / 1e6
        name = f"**{trial['name']}**" if chosen and trial.get("key") == chosen.get("key") else trial["name"]
        lines.append(
            f"| {number} | {name} | {trial.get('phase', '')} | {trial.get('backend', '')} | {fallback} | "
            f"{_number(trial.get('metric'))} | {'–' if delta is None else f'{delta:+.2f}'} | {_number(trial.get('latency_ms'))} | "
            f"{'–' if speedup is None else f'{speedup:.2f}x'} | {_number(trial.get('remeasured_ms'))} | {_number(size, 1)} | "
            f"{_decision(trial)} |"
        )
    return "\n".join(lines) + "\n"
