"""Why SST-2 agreement stops near 99%: the FP32 margins of the sentences INT8 flips.

    cd /tmp && PYTHONPATH=/work/main/src HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 \\
        /work/main/.venv/bin/python /work/main/benchmarks/agreement_margins.py dyn-default dyn-8bit static-default

On the 5,000 unseen SST-2 train sentences of `accuracy.py sst2`, compares each INT8 variant's logits with PyTorch
FP32: agreement, the largest FP32 logit margin |l1 - l0| among flipped sentences, and the INT8 error of that
margin (median, 99th percentile). Variants: our ONNX Runtime defaults (dynamic without and with calibration data, i.e. smoothing) and 8-bit dynamic, our OpenVINO static INT8
(symmetric default, asymmetric) and INT8 weights, and NNCF's ONNX backend on ONNX Runtime (`nncf-onnx-mixed`,
`nncf-onnx-performance`). Writes benchmarks/results/<--name, default sst2_agreement_margins>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import accuracy
import finetune
import numpy as np

from optimum.quantization.evaluation.metrics import classification_logits
from optimum.quantization.hardware import cpu_info, cpu_summary
from optimum.quantization.recipe import library_versions

RESULTS = Path(__file__).resolve().parent / "results"


def nncf_onnx(model_dir: Path, calibration: list[str], preset: str):
    """NNCF's ONNX backend (transformer scheme: SmoothQuant, fast bias correction) on our FP32 export, run by ONNX
    Runtime: the other library that offers these corrections, to see whether they move agreement."""
    import nncf
    import onnx
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer

    from optimum.quantization import QuantModelForSequenceClassification

    folder = Path(tempfile.mkdtemp(prefix="nncf-onnx-"))
    QuantModelForSequenceClassification.from_pretrained(model_dir, quantize=None).save_pretrained(folder)
    graph = onnx.load(str(folder / "model.onnx"))
    names = {i.name for i in graph.graph.input}
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    feeds = [{k: v for k, v in tokenizer([text], return_tensors="np", padding="max_length", max_length=128,
                                           truncation=True).items() if k in names} for text in calibration]
    head = [n.name for n in graph.graph.node if "classifier" in n.name]  # kept FP32, as our defaults do
    quantized = nncf.quantize(graph, nncf.Dataset(feeds), preset=nncf.QuantizationPreset(preset),
                              model_type=nncf.ModelType.TRANSFORMER, subset_size=len(feeds),
                              ignored_scope=nncf.IgnoredScope(names=head, validate=False))
    onnx.save(quantized, str(folder / "model.onnx"))
    return ORTModelForSequenceClassification.from_pretrained(folder)


def main(names: list[str], stem: str) -> int:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from optimum.quantization import QuantModelForSequenceClassification
    from optimum.quantization.configuration import DynamicQuantConfig, StaticQuantConfig

    model_dir = finetune.sst2_classifier()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = accuracy.unseen_train_sentences(accuracy.AGREEMENT_SENTENCES)
    calibration = accuracy.unseen_train_sentences(accuracy.AGREEMENT_SENTENCES + 128)[accuracy.AGREEMENT_SENTENCES :]
    openvino = {"backend": "openvino", "calibration_dataset": calibration}
    variants = {
        "dyn-default": {"quantize": "dynamic"},  # no calibration data: smoothed on random vocabulary words
        "dyn-unsmoothed": {"quantize": DynamicQuantConfig(smoothing_without_data=None)},
        "dyn-smoothed": {"quantize": "dynamic", "calibration_dataset": calibration},
        "dyn-8bit": {"quantize": DynamicQuantConfig(reduce_range=False)},
        "static-default": {"quantize": "static", "calibration_dataset": calibration},  # smoothed since smoothing_alpha="auto"
        "static-unsmoothed": {"quantize": StaticQuantConfig(smoothing_alpha=None), "calibration_dataset": calibration},
        "ov-static-default": {**openvino, "quantize": "static", "precision": "int8"},
        "ov-static-asymmetric": {**openvino, "quantize": StaticQuantConfig(symmetric=False), "precision": "int8"},
        "ov-int8-weights": {**openvino, "quantize": "static", "precision": "int8-weights"},
    }
    builders = {name: (lambda kwargs=kwargs: QuantModelForSequenceClassification.from_pretrained(
        model_dir, export=True, **kwargs)) for name, kwargs in variants.items()}
    builders.update({f"nncf-onnx-{p}": (lambda p=p: nncf_onnx(model_dir, calibration, p)) for p in ("mixed", "performance")})
    unknown = [n for n in names if n not in builders]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {sorted(builders)}")
    fp32 = classification_logits(AutoModelForSequenceClassification.from_pretrained(model_dir).eval(), tokenizer, texts)
    margin = np.abs(fp32[:, 1] - fp32[:, 0])
    result = {"sentences": len(texts), "fp32_margin_quantiles": dict(zip(["0.5%", "1%", "2%", "5%"],
              np.quantile(margin, [0.005, 0.01, 0.02, 0.05]).round(3).tolist())), "variants": []}
    for name in names:
        int8 = classification_logits(builders[name](), tokenizer, texts)
        flipped = int8.argmax(1) != fp32.argmax(1)
        error = np.abs((int8[:, 1] - int8[:, 0]) - (fp32[:, 1] - fp32[:, 0]))
        result["variants"].append({
            "variant": name, "agreement": round(float(1 - flipped.mean()), 4), "flipped": int(flipped.sum()),
            "largest_fp32_margin_flipped": round(float(margin[flipped].max()), 3) if flipped.any() else 0.0,
            "margin_error_p50": round(float(np.median(error)), 3),
            "margin_error_p99": round(float(np.quantile(error, 0.99)), 3),
        })
        print(result["variants"][-1], flush=True)
    result.update(machine=cpu_info().to_dict(), versions=library_versions())
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    rows = [f"| {v['variant']} | {100 * v['agreement']:.2f}% | {v['flipped']} | {v['largest_fp32_margin_flipped']} | "
            f"{v['margin_error_p50']} | {v['margin_error_p99']} |" for v in result["variants"]]
    cpu = result["machine"]
    (RESULTS / f"{stem}.md").write_text("\n".join([
        f"Machine: {cpu_summary(cpu)}. {len(texts)} unseen SST-2 train sentences; "
        f"FP32 logit margin quantiles {result['fp32_margin_quantiles']}.", "",
        "| variant | agreement | flipped | largest FP32 margin flipped | margin error p50 | p99 |",
        "|---|---|---|---|---|---|", *rows]) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="*", default=["dyn-default", "dyn-8bit", "static-default"])
    parser.add_argument("--name", default="sst2_agreement_margins", help="results file stem")
    args = parser.parse_args()
    sys.exit(main(args.variants, args.name))
