"""NNCF quantization-aware training: `nncf.quantize` on the torch model, then ordinary fine-tuning.

NNCF places its own quantizers (transformer preset) and sets their ranges from a few batches; training then
updates the weights and NNCF's trainable ranges. For export its quantizers switch to Q/DQ pairs that ONNX
Runtime and OpenVINO read (`QuantizerExportMode.ONNX_QUANTIZE_DEQUANTIZE_PAIRS`).
"""

from __future__ import annotations

import contextlib
import fnmatch
from typing import Iterable

from ..configuration import QATConfig
from ..errors import BackendUnavailableError


def _nncf():
    try:
        import nncf
    except ImportError as err:
        raise BackendUnavailableError(
            f"QATConfig(method='nncf') needs NNCF ({err}): pip install 'optimum-quantization[openvino]'."
        ) from err
    return nncf


def _nncf_quantizers(model):
    try:
        from nncf.torch.quantization.layers import BaseQuantizer
    except ImportError:
        return []
    return [m for m in model.modules() if isinstance(m, BaseQuantizer)]


def is_nncf_model(model) -> bool:
    import sys

    return "nncf" in sys.modules and bool(_nncf_quantizers(model))


def ignored_scope(config: QATConfig):
    """Our module-name exclusion patterns as NNCF regexes over its node names ("classifier/linear/0")."""
    nncf = _nncf()
    patterns = [fnmatch.translate(p.replace(".", "/")).removesuffix(r"\Z") + "(/.*)?$" for p in config.exclusion_patterns()]
    return nncf.IgnoredScope(patterns=patterns, validate=False)


def quantize(model, config: QATConfig, batches: Iterable[dict]):
    """`nncf.quantize` the torch model with `config.calibration_batches` batches; returns the model to train."""
    nncf = _nncf()
    batches = list(batches)
    dataset = nncf.Dataset(batches)
    was_training = model.training
    model.eval()
    quantized = nncf.quantize(
        model,
        dataset,
        subset_size=len(batches),
        model_type=nncf.ModelType.TRANSFORMER,
        ignored_scope=ignored_scope(config),
    )
    quantized.train(was_training)
    return quantized


@contextlib.contextmanager
def onnx_export_mode(model, config: QATConfig | None):
    """While exporting an NNCF model, its quantizers emit QuantizeLinear/DequantizeLinear pairs."""
    quantizers = _nncf_quantizers(model) if config is not None and config.method == "nncf" else []
    if not quantizers:
        yield
        return
    from nncf.torch.quantization.layers import QuantizerExportMode

    previous = [q._export_mode for q in quantizers]
    for quantizer in quantizers:
        quantizer.set_export_mode(QuantizerExportMode.ONNX_QUANTIZE_DEQUANTIZE_PAIRS)
    try:
        yield
    finally:
        for quantizer, mode in zip(quantizers, previous):
            quantizer.set_export_mode(mode)
