"""OpenVINO static INT8 with NNCF's SmoothQuant at its transformer default (alpha 0.95, our smoothing_alpha="auto"),
at alpha 0.5 (our ONNX Runtime default) and switched off, on the fine-tuned MiniLM checkpoints of accuracy.py.

    .venv/bin/python benchmarks/openvino_smoothing.py sst2 sst2_openvino_smoothing_vnni
    .venv/bin/python benchmarks/openvino_smoothing.py squad squad_openvino_smoothing_vnni_all_heldout
"""

from __future__ import annotations

import argparse

import accuracy
from optimum.quantization.configuration import StaticQuantConfig
from optimum.quantization.evaluation.report import write_reports
from optimum.quantization.variants import VariantSpec


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("benchmark", choices=("sst2", "squad"))
    parser.add_argument("name", help="results file stem")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    specs = ["pytorch-fp32", "ov-int8-nncf"] + [
        VariantSpec(name, "openvino", {"quantize": StaticQuantConfig(smoothing_alpha=alpha).to_dict(), "precision": "int8"})
        for name, alpha in (("ov-int8-smoothing-0.5", 0.5), ("ov-int8-no-smoothing", None))
    ]
    if args.benchmark == "sst2":
        result = accuracy.sst2(specs, args.threads)
    else:
        result = accuracy.squad(specs, args.threads, None)
    write_reports(result, accuracy.RESULTS, args.name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
