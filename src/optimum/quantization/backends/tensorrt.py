"""TensorRT backend: explicit-precision Q/DQ ONNX run by ONNX Runtime's TensorrtExecutionProvider.

TensorRT builds an INT8 engine from a Q/DQ graph only if the graph follows its explicit-precision rules:
symmetric INT8 (zero-point 0), per-tensor activation scales, per-channel weight scales on the output-channel
axis, and every GEMM fed by DequantizeLinear. `validate_explicit_precision` checks those rules on CPU, so a
model can be vetted where no GPU is; `load` runs it with the TensorRT EP (INT8, engine cache) when ORT offers
that provider, and otherwise on ORT's CPU EP after validating it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ..configuration import QATConfig
from ..errors import UnsupportedModelError
from ..recipe import QuantizationRecipe
from .base import Backend, QuantizationRequest
from .onnxruntime import MODEL_FILE, OnnxRuntimeBackend

logger = logging.getLogger(__name__)

TRT_PROVIDER = "TensorrtExecutionProvider"
ENGINE_CACHE = "trt_engines"
# Ops a weight or activation may pass through between its DequantizeLinear and the GEMM that reads it.
_TRANSPARENT = {"Transpose", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Cast", "Identity"}
_GEMMS = {"MatMul", "Gemm"}


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attribute.t)
    return values


def _attribute(node, name, default=None):
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def validate_explicit_precision(model: onnx.ModelProto | str | Path) -> dict:
    """Check a Q/DQ graph against TensorRT's explicit INT8 rules; return counts, raise listing every violation.

    Checked: zero-points are INT8 zeros; scales are finite and positive; activation scales are per-tensor;
    weight scales are per-channel along the output-channel axis of the GEMM that reads the weight (axis 0 for
    a weight transposed into the GEMM or read by Gemm(transB=1), axis 1 for a (in, out) weight); every GEMM
    input comes from DequantizeLinear. GEMMs left in FP32 (excluded task heads) are counted, not refused.
    """
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    constants = _constants(model)
    producers = {out: node for node in model.graph.node for out in node.output}
    problems: list[str] = []
    counts = {"quantize_linear": 0, "dequantize_linear": 0, "per_channel_weights": 0, "int8_gemms": 0, "fp32_gemms": 0}

    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        counts["quantize_linear" if node.op_type == "QuantizeLinear" else "dequantize_linear"] += 1
        scale = constants.get(node.input[1])
        zero = constants.get(node.input[2]) if len(node.input) > 2 else None
        if scale is None:
            problems.append(f"{node.name}: scale is computed at run time, TensorRT needs a constant")
        elif not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
            problems.append(f"{node.name}: scale not finite and positive")
        if zero is None or zero.dtype != np.int8 or np.any(zero != 0):
            problems.append(f"{node.name}: zero-point must be INT8 zeros (symmetric), got {None if zero is None else zero.dtype}")

    def source(name: str, through: list) -> onnx.NodeProto | None:
        node = producers.get(name)
        while node is not None and node.op_type in _TRANSPARENT:
            through.append(node)
            node = producers.get(node.input[0])
        return node

    for node in model.graph.node:
        if node.op_type not in _GEMMS:
            continue
        feeds = [(i, name) for i, name in enumerate(node.input[:2])]
        dequantized = []
        for index, name in feeds:
            through: list = []
            producer = source(name, through)
            dequantized.append(producer is not None and producer.op_type == "DequantizeLinear")
            if not dequantized[-1]:
                continue
            quantize = producers.get(producer.input[0])
            is_weight = producer.input[0] in constants or (
                quantize is not None and quantize.op_type == "QuantizeLinear" and quantize.input[0] in constants
            )
            scale = constants.get(producer.input[1])
            if scale is None:
                continue
            if not is_weight:
                if scale.size != 1:
                    problems.append(f"{node.name}: activation input {index} has a per-channel scale")
                continue
            if scale.size == 1:
                continue  # per-tensor weight: allowed (per_channel=False), just not counted
            axis = _attribute(producer, "axis", 1)
            transposed = any(t.op_type == "Transpose" for t in through)
            if node.op_type == "Gemm" and index == 1 and _attribute(node, "transB", 0):
                transposed = not transposed
            expected = 0 if transposed else 1
            if index != 1 or axis != expected:
                problems.append(f"{node.name}: per-channel weight axis {axis}, the output channels are on axis {expected}")
            else:
                counts["per_channel_weights"] += 1
        counts["int8_gemms" if all(dequantized) else "fp32_gemms"] += 1
        if any(dequantized) and not all(dequantized):
            problems.append(f"{node.name}: only some inputs are quantized; TensorRT needs Q/DQ on both GEMM inputs")

    if counts["int8_gemms"] == 0:
        problems.append("no GEMM has quantized inputs: this is not an explicit-precision INT8 graph")
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise UnsupportedModelError(f"The graph does not follow TensorRT's explicit INT8 rules:\n  {shown}{more}")
    return counts


def tensorrt_available() -> bool:
    import onnxruntime

    return TRT_PROVIDER in onnxruntime.get_available_providers()


def tensorrt_provider_options(cache_dir: Path, int8: bool = True, fp16: bool = False) -> dict:
    return {
        "trt_int8_enable": int8,
        "trt_fp16_enable": fp16,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache_dir),
    }


class TensorRTBackend(OnnxRuntimeBackend):
    """Runs Q/DQ models written by `QATTrainer.save_quantized(dir, backend="tensorrt")`."""

    supported_configs = (QATConfig,)

    def quantize(self, request: QuantizationRequest):
        raise UnsupportedModelError(
            "The tensorrt backend runs explicit-precision Q/DQ models: build one with QATTrainer (fake_quant) and "
            "save it with `trainer.save_quantized(dir, backend='tensorrt')`, or `qat.export.save_quantized` after "
            "`qat.prepare` for a calibrate-only (PTQ) model; then load it with QuantModelFor<Task>.from_pretrained(dir)."
        )

    def load(self, path: Path, recipe: QuantizationRecipe, **load_kwargs):
        if "provider" not in load_kwargs and "providers" not in load_kwargs:
            if tensorrt_available():
                load_kwargs["provider"] = TRT_PROVIDER
                load_kwargs["provider_options"] = tensorrt_provider_options(Path(path) / ENGINE_CACHE)
            else:
                counts = validate_explicit_precision(Path(path) / MODEL_FILE)
                logger.info("No TensorRT execution provider: graph validated for TensorRT (%s), running on ORT CPU.", counts)
                load_kwargs["provider"] = "CPUExecutionProvider"
        return self._load_model(path, recipe, **load_kwargs)
