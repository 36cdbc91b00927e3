"""Text generation side by side: per-token latency, time to first token and peak memory of each variant in
fresh processes, and every variant's continuations of the same prompts for a human to read.

Variants are `variants.VariantSpec`s. Two kinds are added here for causal LMs: our ONNX Runtime model with
load options (`use_io_binding`), and optimum-intel's `OVModelForCausalLM` as the peer (weight-only 8/4-bit).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .configuration import WeightOnlyQuantConfig
from .errors import ConfigError, QuantizationError
from .hardware import cpu_summary
from .evaluation.benchmark import memory_snapshot, peak_rss_bytes, set_threads
from .evaluation.generation import (
    fixed_length_kwargs,
    no_grad,
    numpy_prompt_inputs,
    per_token_latency,
    prompt_inputs,
    side_by_side_generations,
    tokens_per_second,
)
from .recipe import library_versions
from .side_by_side import _check_baseline, build_all, machine_record, measure_round_robin, run_worker
from .variants import (
    SPEC_FILE,
    OurQuantized,
    VariantBuilder,
    VariantSpec,
    _ort_session_options,
    builder_for,
    load_variant,
    parse_variant,
    register_variant_kind,
)

TASK = "text-generation"


@register_variant_kind("ort-causal-lm")
class OrtCausalLM(OurQuantized):
    """Our ONNX Runtime causal LM (options: quantize, load: {"use_io_binding": bool})."""

    requires = ("onnxruntime",)
    extra = "onnxruntime"

    def load(self, spec, folder, task, threads):
        from .modeling import QUANT_MODEL_CLASSES

        kwargs = dict(spec.options.get("load") or {})
        if threads is not None:
            kwargs["session_options"] = _ort_session_options(threads)
        return QUANT_MODEL_CLASSES[task].from_pretrained(str(folder), **kwargs)


@register_variant_kind("optimum-intel-causal-lm")
class OptimumIntelCausalLM(VariantBuilder):
    """optimum-intel's `OVModelForCausalLM`, used directly (options: bits 8 or 4, weight-only; none: FP32 IR).

    As shipped, its `generate()` leaves PyTorch's thread count alone; `load: {"generate_torch_threads": 1}` gives
    it our fix (`backends.generate_threads`), to show how much of a difference is that fix alone.
    """

    requires = ("openvino", "optimum.intel")
    extra = "openvino"

    def build(self, spec, context, folder):
        from optimum.intel import OVModelForCausalLM, OVWeightQuantizationConfig

        bits = spec.options.get("bits")
        kwargs = {"load_in_8bit": True} if bits == 8 else {}
        if bits == 4:
            kwargs["quantization_config"] = OVWeightQuantizationConfig(bits=4)
        elif bits not in (None, 8):
            raise ConfigError(f"optimum-intel weight-only bits must be 8 or 4, not {bits!r}.")
        if bits is None:
            kwargs["load_in_8bit"] = False
        OVModelForCausalLM.from_pretrained(context.source_dir, export=True, compile=False, **kwargs).save_pretrained(folder)
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(context.source_dir).save_pretrained(folder)

    def load(self, spec, folder, task, threads):
        from optimum.intel import OVModelForCausalLM

        ov_config = {"INFERENCE_NUM_THREADS": str(threads)} if threads else None
        torch_threads = (spec.options.get("load") or {}).get("generate_torch_threads")
        model_class = OVModelForCausalLM
        if torch_threads is not None:
            from .backends.generate_threads import RuntimeGenerateThreadsMixin

            model_class = type("OVModelForCausalLMTorchThreads", (RuntimeGenerateThreadsMixin, OVModelForCausalLM), {})
        model = model_class.from_pretrained(folder, ov_config=ov_config)
        if torch_threads is not None:
            model.generate_torch_threads = torch_threads
        return model


@register_variant_kind("lean-ort")
class LeanOrtCausalLM(OurQuantized):
    """Our ONNX Runtime causal LM run by `lean_generation.LeanCausalLM` (options: quantize): the worker process
    imports neither PyTorch nor transformers."""

    requires = ("onnxruntime",)
    extra = "onnxruntime"
    torch_free = True

    def load(self, spec, folder, task, threads):
        from .lean_generation import LeanCausalLM

        return LeanCausalLM.from_pretrained(folder, threads=threads)


def _ort(quantize, io_binding: bool) -> dict:
    return {"backend": "onnxruntime", "quantize": quantize, "load": {"use_io_binding": io_binding}}


GENERATION_VARIANTS: dict[str, VariantSpec] = {
    spec.name: spec
    for spec in (
        VariantSpec("pytorch-fp32", "pytorch"),
        VariantSpec("ort-fp32", "ort-causal-lm", _ort(None, True)),
        VariantSpec("ort-fp32-no-iobinding", "ort-causal-lm", _ort(None, False)),
        VariantSpec("ort-int8", "ort-causal-lm", _ort("int8", True)),
        VariantSpec("ort-int8-no-iobinding", "ort-causal-lm", _ort("int8", False)),
        VariantSpec("ort-int8-dynamic", "ort-causal-lm", _ort("dynamic", True)),
        VariantSpec("ort-w8", "ort-causal-lm", _ort("w8", True)),
        VariantSpec("ort-w4", "ort-causal-lm", _ort("w4", True)),
        VariantSpec("lean-ort-w8-head", "lean-ort",
                    {"quantize": WeightOnlyQuantConfig(keep_default_exclusions=False).to_dict()}),
        VariantSpec("optimum-intel-w8", "optimum-intel-causal-lm", {"bits": 8}),
        VariantSpec("optimum-intel-w8-torch1", "optimum-intel-causal-lm", {"bits": 8, "load": {"generate_torch_threads": 1}}),
        VariantSpec("optimum-intel-w4", "optimum-intel-causal-lm", {"bits": 4}),
    )
}


def parse_generation_variant(value) -> VariantSpec:
    return GENERATION_VARIANTS[value] if isinstance(value, str) and value in GENERATION_VARIANTS else parse_variant(value)


@dataclass
class GenerationBenchmarkConfig:
    batch_sizes: Sequence[int] = (1, 4)
    prompt_length: int = 32
    new_tokens: int = 64
    repeats: int = 5
    warmup: int = 1
    threads: int | None = None
    rounds: int = 1
    seed: int = 0

    def __post_init__(self):
        if not self.batch_sizes or min(self.batch_sizes) < 1 or self.prompt_length < 1:
            raise ConfigError("Batch sizes and the prompt length must be positive.")
        if self.new_tokens < 2 or self.repeats < 1 or self.rounds < 1 or self.warmup < 0:
            raise ConfigError("new_tokens must be >= 2, repeats and rounds >= 1, warmup >= 0.")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "batch_sizes": list(self.batch_sizes)}


def _build_shared(model_path: str, specs: Sequence[VariantSpec], work_dir: Path) -> dict[str, Path | str]:
    """Build each distinct model once; variants differing only in load options get a copy of its folder."""
    def key(spec):
        return json.dumps([spec.kind, {k: v for k, v in spec.options.items() if k != "load"}], sort_keys=True)

    firsts = {}
    for spec in specs:
        firsts.setdefault(key(spec), spec)
    built = build_all(model_path, TASK, list(firsts.values()), work_dir)
    for spec in specs:
        origin = built[firsts[key(spec)].name]
        if spec.name in built:
            continue
        if isinstance(origin, str):
            built[spec.name] = origin
            continue
        folder = work_dir / "variants" / spec.name
        shutil.copytree(origin, folder)
        (folder / SPEC_FILE).write_text(json.dumps(spec.to_dict(), indent=2), encoding="utf-8")
        built[spec.name] = folder
    return built


def _worker(job_path: str, output_path: str) -> None:
    """One variant in a fresh process: time to first token from process start, per-token latency, peak memory."""
    job = json.loads(Path(job_path).read_text(encoding="utf-8"))
    config = GenerationBenchmarkConfig(**job["config"])
    memory = [("python + optimum.quantization", memory_snapshot())]
    folder = Path(job["folder"])
    spec = VariantSpec.from_dict(json.loads((folder / SPEC_FILE).read_text(encoding="utf-8")))
    builder = builder_for(spec)
    torch_free = builder.torch_free
    if not torch_free:
        set_threads(config.threads)
        import torch  # noqa: F401

    memory.append(("+ torch", memory_snapshot()))
    if not torch_free:
        import transformers.generation.utils  # noqa: F401  (what any generate()-able model imports)

    memory.append(("+ transformers generation", memory_snapshot()))
    load_start = time.time()
    for module in builder.requires:
        importlib.import_module(module)
    memory.append(("+ runtime", memory_snapshot()))
    model = load_variant(folder, TASK, threads=config.threads)
    load_s = time.time() - load_start
    memory.append(("model loaded", memory_snapshot()))
    prompts = numpy_prompt_inputs if torch_free else prompt_inputs
    first = prompts(1, config.prompt_length, job["vocab_size"], config.seed)
    with no_grad():
        model.generate(**first, **fixed_length_kwargs(1))
    time_to_first_token_s = time.time() - job["spawned_at"]
    memory.append(("first token", memory_snapshot()))
    latency = []
    for b in config.batch_sizes:
        inputs = prompts(b, config.prompt_length, job["vocab_size"], config.seed)
        latency.append(per_token_latency(model, inputs, config.new_tokens, repeats=config.repeats, warmup=config.warmup))
        memory.append((f"generate b{b}", memory_snapshot()))
    result = {
        "load_s": load_s,
        "time_to_first_token_s": time_to_first_token_s,
        "peak_rss_bytes": peak_rss_bytes(),
        "memory_stages": [{"stage": stage, **snapshot} for stage, snapshot in memory],
        "load_average_1m": os.getloadavg()[0],
        "latency": latency,
        "imported": [name for name in ("torch", "transformers") if name in sys.modules],
    }
    Path(output_path).write_text(json.dumps(result), encoding="utf-8")


def measure_in_fresh_process(folder: Path, config: GenerationBenchmarkConfig, vocab_size: int) -> dict:
    job = {"folder": str(folder), "config": config.to_dict(), "vocab_size": vocab_size}
    return run_worker(__name__, job, config.threads, "generation benchmark")


def merge_rounds(rounds: list[dict]) -> dict:
    """Median of every number over the rounds of one variant, per batch size."""
    merged = {k: statistics.median(r[k] for r in rounds) for k in ("load_s", "time_to_first_token_s", "peak_rss_bytes", "load_average_1m")}
    latency = []
    for rows in zip(*(r["latency"] for r in rounds)):
        row = dict(rows[0])
        for k in ("first_token_ms", "total_ms", "per_token_ms"):
            row[k] = statistics.median(r[k] for r in rows)
        row["tokens_per_s"] = tokens_per_second(row["batch_size"], row["per_token_ms"])
        latency.append(row)
    stages = [
        {"stage": rows[0]["stage"], **{k: statistics.median(r[k] for r in rows) for k in rows[0] if k != "stage"}}
        for rows in zip(*(r.get("memory_stages", []) for r in rounds))
    ]
    imported = sorted({name for r in rounds for name in r.get("imported", [])})
    return {**merged, "latency": latency, "memory_stages": stages, "rounds": len(rounds), "imported": imported}


def run_generation_benchmark(
    model_path: str,
    variants: Sequence = ("pytorch-fp32", "ort-fp32", "ort-int8", "ort-int8-no-iobinding"),
    baseline: str | None = None,
    config: GenerationBenchmarkConfig | None = None,
    work_dir: str | Path | None = None,
) -> dict:
    """Build `variants` of a causal LM and measure each in fresh processes, round-robin in alternating order."""
    from transformers import AutoConfig

    specs = [parse_generation_variant(v) for v in variants]
    baseline = _check_baseline(specs, baseline or "pytorch-fp32")
    config = config or GenerationBenchmarkConfig()
    with tempfile.TemporaryDirectory(prefix="optimum-quantization-genbench-", dir=work_dir) as tmp:
        built = _build_shared(model_path, specs, Path(tmp))
        vocab_size = AutoConfig.from_pretrained(Path(tmp) / "source").vocab_size
        rows = measure_round_robin(
            specs, built, config.rounds, merge_rounds, lambda folder: measure_in_fresh_process(folder, config, vocab_size)
        )
    return {
        "kind": "generation-benchmark",
        "model": str(model_path),
        "baseline": baseline,
        "config": config.to_dict(),
        "machine": machine_record(config.threads),
        "versions": library_versions(),
        "variants": rows,
    }


def generation_benchmark_markdown(result: dict) -> str:
    """Per-token latency per batch size with speed-ups over the baseline, size, peak memory and TTFT."""
    config, cpu = result["config"], result["machine"]["cpu"]
    by_name = {v["name"]: v for v in result["variants"]}
    base = by_name.get(result["baseline"], {})
    base_latency = {r["batch_size"]: r["per_token_ms"] for r in base.get("latency", [])}
    batch_sizes = config["batch_sizes"]
    head = ["variant"] + [f"ms/token b{b} (speed-up)" for b in batch_sizes] + ["size MB", "peak RSS MB", "time to first token s"]
    lines = [
        f"# Generation speed: {result['model']}",
        "",
        f"Prompt {config['prompt_length']} tokens, {config['new_tokens']} new tokens (greedy, fixed length), "
        f"{config['rounds']} round(s) in fresh processes; threads {config['threads']}; baseline {result['baseline']}. "
        f"CPU: {cpu_summary(cpu)}.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for row in result["variants"]:
        if "error" in row:
            lines.append(f"| {row['name']} | error: {row['error'][:100]} |" + " |" * (len(head) - 2))
            continue
        cells = [row["name"]]
        for b in batch_sizes:
            r = next((x for x in row["latency"] if x["batch_size"] == b), None)
            ratio = base_latency.get(b, 0) / r["per_token_ms"] if r and r["per_token_ms"] > 0 and b in base_latency else None
            cells.append("-" if r is None else f"{r['per_token_ms']:.1f}" + (f" ({ratio:.2f}x)" if ratio else ""))
        cells += [f"{row['size_bytes'] / 1e6:.0f}", f"{row['peak_rss_bytes'] / 1e6:.0f}", f"{row['time_to_first_token_s']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n" + memory_stages_markdown(result["variants"])


def memory_stages_markdown(rows: Sequence[dict]) -> str:
    """Resident memory (MB) of each variant's fresh process after each stage, with the file-backed part and the peak."""
    rows = [r for r in rows if r.get("memory_stages")]
    if not rows:
        return ""
    stages = [s["stage"] for s in rows[0]["memory_stages"]]
    lines = [
        "",
        "Resident memory (VmRSS MB, file-backed part in brackets: mapped libraries and weights) after each stage "
        "of the fresh process; the last column is its peak (VmHWM).",
        "",
        "| variant | " + " | ".join(stages) + " | peak |",
        "|" + "---|" * (len(stages) + 2),
    ]
    for row in rows:
        cells = [f"{s['rss_bytes'] / 1e6:.0f} ({s['file_bytes'] / 1e6:.0f})" if "rss_bytes" in s else "-" for s in row["memory_stages"]]
        lines.append(f"| {row['name']} | " + " | ".join(cells) + f" | {row['peak_rss_bytes'] / 1e6:.0f} |")
    return "\n".join(lines) + "\n"


def run_generations(
    model_path: str, variants: Sequence, prompts: Sequence[str], settings: dict[str, dict], seed: int = 0,
    threads: int | None = None, work_dir: str | Path | None = None,
) -> dict:
    """Each variant's continuation of each prompt under each named set of `generate()` settings.

    Every variant draws with the same seed per prompt. Returns {"runs": {settings name: side-by-side result}}.
    """
    from transformers import AutoTokenizer

    specs = [parse_generation_variant(v) for v in variants]
    set_threads(threads)
    with tempfile.TemporaryDirectory(prefix="optimum-quantization-gen-", dir=work_dir) as tmp:
        built = _build_shared(model_path, specs, Path(tmp))
        failed = {name: err for name, err in built.items() if isinstance(err, str)}
        if failed:
            raise QuantizationError(f"variants not built: {failed}")
        tokenizer = AutoTokenizer.from_pretrained(Path(tmp) / "source")
        models = {s.name: load_variant(built[s.name], TASK, threads=threads) for s in specs}
        runs = {name: side_by_side_generations(models, tokenizer, prompts, seed=seed, **kwargs) for name, kwargs in settings.items()}
    return {"runs": runs, "model": str(model_path), "machine": machine_record(threads), "versions": library_versions()}


if __name__ == "__main__":
    _worker(*sys.argv[1:3])
