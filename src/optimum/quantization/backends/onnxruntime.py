"""ONNX Runtime (CPU) backend: export -> fuse -> quantize, served by optimum's ORTModel classes."""

from __future__ import annotations

import glob
import logging
import shutil
import tempfile
from pathlib import Path

import onnx
import onnxruntime
from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

try:  # onnxruntime >= 1.32: precomputed ranges go to quantize_static through a calibration cache file
    from onnxruntime.quantization.calibrate import save_tensors_data
except ImportError:  # older wheels (onnxruntime-openvino 1.24): quantize_static calibrates min/max itself
    save_tensors_data = None
from optimum.onnxruntime import (
    ORTModelForCausalLM,
    ORTModelForFeatureExtraction,
    ORTModelForQuestionAnswering,
    ORTModelForSequenceClassification,
    ORTModelForTokenClassification,
)

from ..calibration import random_word_examples, tokenize_examples
from ..configuration import DynamicQuantConfig, StaticQuantConfig, WeightOnlyQuantConfig
from ..errors import BackendUnavailableError, ConfigError, ModelFileError, damaged_file
from ..evaluation.census import int8_op_counts
from ..export import export_onnx
from ..hardware import cpu_info, resolve_reduce_range
from ..presets import DEFAULT_EXCLUDE
from ..recipe import QuantizationRecipe
from .base import (
    Backend, QuantizationRequest, QuantizedModelMixin, check_patterns_used, matches_any, runtime_model_class,
)
from .ort_pair_safe import make_pair_safe
from .ort_outlier_channels import split_outlier_channels
from .ort_smoothing import smooth_graph
from .ort_calibration import ORT_METHODS, ListDataReader, calibrate
from .generate_threads import RuntimeGenerateThreadsMixin
from .ort_kv_buffers import PreallocatedKVBindingMixin
from .ort_embeddings import EMBEDDING_OP, folding_session_options, has_per_row_tables, store_tables_per_row
from .ort_norm_fusion import UNFUSED_AT_LOAD, fusion_options, unfused_session_options

logger = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
# Causal LMs are saved with their weights beside the graph (model.onnx + model.onnx_data): ONNX Runtime maps
# the data file instead of parsing a protobuf that holds every weight and copying the weights out of it.
# GPT-2 small shape, 8-bit weight-only, one fresh process: peak RSS at session creation 669 -> 469 MB (bare ORT),
# 1121 -> 947 MB through QuantModelForCausalLM (benchmarks/results/generation_memory.md).
EXTERNAL_DATA_TASKS = ("text-generation",)
# Keeps the FP32 graph's float tensors typed when quantizing a fused graph whose contrib ops lack shape inference.
_FLOAT_DEFAULT = {"DefaultTensorType": onnx.TensorProto.FLOAT}
# Gemm is left out on purpose: quantize_dynamic renames a Gemm to "<name>_MatMul", which would make
# exclusions by module name (task heads) silently do nothing.
# EmbedLayerNormalization (fused graphs) gets its embedding tables in 8 bits: they are a fifth to a half of a
# BERT's weights (MiniLM file 0.65x -> 0.25x of FP32). By default per row (ort_embeddings, DynamicQuantConfig
# .embeddings); ONNX Runtime's own QEmbedLayerNormalization (one scale per table) cost MiniLM SQuAD 1.8 F1.
DYNAMIC_OP_TYPES = ["MatMul", "Attention", "EmbedLayerNormalization"]
STATIC_OP_TYPES = ["MatMul", "Gemm"]
# MatMulNBitsQuantizer rewrites MatMul (weight as initializer) into MatMulNBits and Gather (4-bit only) into
# GatherBlockQuantized; Gemm is first rewritten to MatMul + Add (named "<gemm>_MatMul"), module names unchanged.
WEIGHT_ONLY_OP_TYPES = ["MatMul", "Gemm"]
WEIGHT_ONLY_SUPPORTED_OPS = {"MatMul": (8, 4), "Gemm": (8, 4), "Gather": (4,)}
WEIGHT_TYPES = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
FORMATS = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}
# Smoothing statistics come from unpadded calibration examples truncated to this many tokens.
SMOOTHING_MAX_LENGTH = 512
# What StaticQuantConfig(symmetric="auto") means here: asymmetric u8 activations; symmetric s8 lost a point of
# SST-2 accuracy on fine-tuned MiniLM.
SYMMETRIC_ACTIVATIONS = False
# What DynamicQuantConfig(smoothing_alpha="auto") means here, by weight range. 7-bit weights (reduce_range, the
# default without VNNI) quantize twice as coarsely, so less of the activations' range should move into them.
# Fine-tuned MiniLM on AVX2 code paths (7-bit), with calibration data, alpha 0.3 / 0.4 / 0.5: SQuAD F1 -0.34 / +0.05 /
# -0.55, SST-2 agreement on 15,000 unseen sentences 98.86 / 98.97 / 99.00% (benchmarks/RESULTS.md). 8-bit (VNNI): 0.5.
DYNAMIC_SMOOTHING_ALPHA = {"8-bit": 0.5, "7-bit": 0.4}
# And what smoothing_statistic="auto" means, by weight range. Fine-tuned MiniLM, SQuAD F1 averaged over draws of the
# smoothing texts (with data and without): on AVX2 code paths (7-bit) the mean of each text's maxima beat the maxima,
# with VNNI (8-bit) it lost to them (benchmarks/RESULTS.md, "How much the smoothing texts move SQuAD F1").
DYNAMIC_SMOOTHING_STATISTIC = {"8-bit": "max", "7-bit": "mean-max"}
# What StaticQuantConfig(smoothing_alpha="auto") means here: SmoothQuant on the LayerNorm-fed GEMMs of the plain
# graph (Q/K/V share a scale). Fine-tuned MiniLM, VNNI Xeon, attention MatMuls in INT8: SQuAD F1 -0.95 -> -0.09 with
# alpha 0.5 (0.3 and 0.7: -0.48, -0.49). Zen 4, attention MatMuls in FP32 (the default since): alpha 0.7 against
# 0.5 SQuAD -0.22 vs -0.52, SST-2 agreement 99.29 vs 99.08% on 10,000 sentences (benchmarks/RESULTS.md).
STATIC_SMOOTHING_ALPHA = 0.7
# What StaticQuantConfig(activation_matmuls="auto") means here: attention's Q x K^T and P x V stay FP32. One static
# range per input cost the most fidelity of anything static quantizes (Zen 4, fine-tuned MiniLM: SQuAD answers equal
# to FP32 85.9 -> 90.3%, SST-2 dev -0.69 -> +0.34), and they are a small share of the GEMM work (same speed).
QUANTIZE_ACTIVATION_MATMULS = False
# What StaticQuantConfig(outlier_channel_ratio="auto") means here: split the FFN output GEMMs' outlier channels into
# FP32 side paths and quantize the output projections that the static default block kept FP32. Fine-tuned MiniLM on
# Zen 5 with VNNI: SQuAD F1 over 4 draws +0.03 vs -0.35, SST-2 agreement 99.32 vs 99.30%; BERT-base 1 x 128 static
# INT8 28.19 vs 41.60 ms (benchmarks/RESULTS.md, "Outlier channels").
STATIC_OUTLIER_CHANNEL_RATIO = 2.0
# IO binding for causal LMs on CPU (KV buffers allocated once per generate()) stays opt-in: on a quiet machine
# (benchmarks/results/generation_speed.md, GPT-2 small shape, prompt 32, 64 new tokens, fresh processes) it was
# no faster: w8 28.3 vs 27.1 ms/token without it at batch 1, 36.4 vs 36.0 at batch 4; FP32 34.7 vs 34.0.
# On CPU the binding saves copies that cost little next to the decode step's matmuls.
CAUSAL_LM_IO_BINDING_DEFAULT = False


def smoothing_length(model_config) -> int:
    """Longest text smoothing measures: SMOOTHING_MAX_LENGTH, or fewer tokens where the model has fewer positions."""
    positions = getattr(model_config, "max_position_embeddings", None)
    return min(SMOOTHING_MAX_LENGTH, positions or SMOOTHING_MAX_LENGTH)


class ORTQuantModelForSequenceClassification(QuantizedModelMixin, ORTModelForSequenceClassification):
    pass


class ORTQuantModelForQuestionAnswering(QuantizedModelMixin, ORTModelForQuestionAnswering):
    pass


class ORTQuantModelForTokenClassification(QuantizedModelMixin, ORTModelForTokenClassification):
    pass


class ORTQuantModelForFeatureExtraction(QuantizedModelMixin, ORTModelForFeatureExtraction):
    pass


class ORTQuantModelForCausalLM(
    QuantizedModelMixin, RuntimeGenerateThreadsMixin, PreallocatedKVBindingMixin, ORTModelForCausalLM
):
    """optimum's `ORTModelForCausalLM`; with `use_io_binding=True` its key/value buffers are allocated once per
    `generate()` and reused across steps (see `ort_kv_buffers`); `generate()` runs with one PyTorch thread
    (see `generate_threads`)."""


def optimum_model_class(task: str) -> type:
    """optimum's `ORTModelFor<Task>` that our class for `task` extends; it also loads other tools' ONNX files."""
    return runtime_model_class(OnnxRuntimeBackend.model_classes[task])


def module_name_of(node_name: str) -> str:
    """'/bert/encoder/layer.0/attention/self/query/MatMul' -> 'bert.encoder.layer.0.attention.self.query'."""
    parts = node_name.strip("/").split("/")
    return ".".join(parts[:-1]) if len(parts) > 1 else node_name


def excluded_nodes(model: onnx.ModelProto, config, op_types, defaults=None) -> tuple[list[str], list[str]]:
    """Nodes of the quantizable op types whose name or module name matches an exclusion pattern (`defaults`: the
    default block to use instead of the config's own)."""
    patterns = config.exclusion_patterns(defaults)
    excluded, used = [], set()
    for node in model.graph.node:
        if node.op_type not in op_types:
            continue
        pattern = matches_any(module_name_of(node.name), patterns) or matches_any(node.name, patterns)
        if pattern:
            excluded.append(node.name)
            used.add(pattern)
    unused = check_patterns_used(config.exclude, used, "quantizable node")
    return excluded, unused


def activation_matmuls(model: onnx.ModelProto) -> list[str]:
    """MatMul nodes with no constant input (attention's Q x K^T and P x V). A tensor is constant when it is an
    initializer or computed from constants only (a Constant node, a Transpose or Cast of a weight)."""
    constants = {t.name for t in model.graph.initializer}
    matmuls = []
    for node in model.graph.node:  # topologically sorted, as ONNX requires
        if all(name in constants for name in node.input if name):
            constants.update(node.output)
        elif node.op_type == "MatMul" and not constants.intersection(node.input):
            matmuls.append(node.name)
    return matmuls


def quantized_units(model: onnx.ModelProto, op_types, excluded) -> list[str]:
    """Module names of the nodes that get quantized, in graph order (fused ops keep their node name).

    Each is an `exclude` pattern that keeps exactly that module in FP32 on this graph: the accuracy-aware
    search falls back with these names, never with names a quantizer renames afterwards (Gemm -> `_MatMul`).
    """
    skip = set(excluded)
    names = (module_name_of(n.name) for n in model.graph.node if n.op_type in op_types and n.name not in skip)
    return [glob.escape(name) for name in dict.fromkeys(names)]


def onnxruntime_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def rewrites_off(alpha: float | None, ratio: float | None) -> dict:
    """The recipe's record of each FP32 rewrite before INT8 (smoothing, the outlier-channel split) that its setting
    turns off (None), in the order the rewrites run."""
    settings = {"smoothing": ("smoothing_alpha", alpha), "outlier_channels": ("outlier_channel_ratio", ratio)}
    return {step: {"applied": False, "reason": f"{name}=None"} for step, (name, value) in settings.items()
            if value is None}


def smooth_and_split(
    src: Path, work_dir: Path, feeds: list[dict], skip: set[str], alpha: float | None, statistic: str = "max",
    ratio: float | None = None,
) -> tuple[Path, dict, list[str]]:
    """Smoothing, then the outlier-channel split, on one in-memory copy of `src` (each step runs when its setting is
    not None), written once. Returns the rewritten graph, each step's record by name and the FP32 side-path nodes."""
    model = onnx.load(str(src))
    records, side_path_nodes = {}, []
    if alpha is not None:
        smoothing = smooth_graph(model, feeds, alpha, skip, statistic)
        records["smoothing"] = {"applied": bool(smoothing["smoothed_nodes"]), **smoothing}
    if ratio is not None:
        split = split_outlier_channels(model, feeds, ratio, skip)
        side_path_nodes = split.pop("side_path_nodes")
        records["outlier_channels"] = {"applied": bool(split["split"]), **split}
    rewritten = work_dir / "rewritten.onnx"
    onnx.save(model, str(rewritten))
    return rewritten, records, side_path_nodes


def fuse_graph(onnx_path: Path, output_path: Path, model_config, fuse_norms: bool = True) -> dict[str, int] | None:
    """Fuse attention, layer norms and GELU for the BERT family (ORT's transformer optimizer); with
    `fuse_norms=False`, residual adds stay apart from LayerNorm and bias adds from GELU (`ort_norm_fusion`).

    Returns the fused-operator counts, or None when the architecture gains nothing from it.
    """
    from onnxruntime.transformers.optimizer import optimize_model
    from optimum.onnxruntime.utils import ORTConfigManager

    try:
        ort_type = ORTConfigManager.get_model_ort_type(model_config.model_type)
    except (KeyError, NotImplementedError):
        return None
    if ort_type != "bert":  # decoders' past-KV attention is not fused by ORT: nothing to gain
        return None
    optimized = optimize_model(
        str(onnx_path),
        model_type="bert",
        num_heads=getattr(model_config, "num_attention_heads", 0) or 0,
        hidden_size=getattr(model_config, "hidden_size", 0) or 0,
        opt_level=0,  # only the transformer fusions: the saved graph stays portable across ORT builds
        optimization_options=fusion_options(fuse_norms),
    )
    optimized.save_model_to_file(str(output_path))
    return {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}


class OnnxRuntimeBackend(Backend):
    supported_configs = (DynamicQuantConfig, StaticQuantConfig, WeightOnlyQuantConfig)
    model_classes = {
        "text-classification": ORTQuantModelForSequenceClassification,
        "question-answering": ORTQuantModelForQuestionAnswering,
        "token-classification": ORTQuantModelForTokenClassification,
        "feature-extraction": ORTQuantModelForFeatureExtraction,
        "text-generation": ORTQuantModelForCausalLM,
    }

    def check_supports(self, task, config) -> None:
        super().check_supports(task, config)
        if isinstance(config, StaticQuantConfig) and task in EXTERNAL_DATA_TASKS:
            # Calibration runs the exported decoder, whose past key/value inputs tokenized text cannot fill.
            raise ConfigError(
                "Static INT8 on ONNX Runtime is for encoders: a causal LM's graph takes past key/values that "
                "calibration text does not provide. Use quantize='w8' (8-bit weights, the causal-LM default) or 'dynamic'."
            )
        if isinstance(config, WeightOnlyQuantConfig):  # checked before the export, which takes a while
            if config.ratio != 1.0:
                raise ConfigError(
                    "ONNX Runtime's MatMulNBits quantizer stores every weight in the same bits: `ratio` must be 1 "
                    "(mixed 4/8-bit weights are available with backend='openvino')."
                )
            unsupported = [op for op in config.op_types or () if config.bits not in WEIGHT_ONLY_SUPPORTED_OPS.get(op, ())]
            if unsupported:
                supported = ", ".join(f"{op} ({'/'.join(map(str, b))}-bit)" for op, b in WEIGHT_ONLY_SUPPORTED_OPS.items())
                raise ConfigError(
                    f"Weight-only {config.bits}-bit quantization cannot handle op type(s) {unsupported}; "
                    f"ONNX Runtime's MatMulNBits quantizer supports {supported}."
                )

    def quantize(self, request: QuantizationRequest):
        work = tempfile.TemporaryDirectory(prefix="optimum-quantization-")
        work_dir = Path(work.name)
        export_dir = work_dir / "model"
        source, head_token = request.model_to_export()
        fp32_path = export_onnx(
            request.model_path, export_dir, request.task, model_type=request.model_type, model=source,
            **request.hub_kwargs,
        )
        del source
        details: dict = {"fp32_size_bytes": fp32_path.stat().st_size}
        if head_token is not None:
            details["head_token_only"] = head_token
        config = request.config
        if config is not None:
            quantized_path = work_dir / "quantized.onnx"
            if isinstance(config, DynamicQuantConfig):
                details.update(self._quantize_dynamic(fp32_path, quantized_path, config, export_dir, work_dir, request))
            elif isinstance(config, WeightOnlyQuantConfig):
                details.update(self._quantize_weight_only(fp32_path, quantized_path, config))
            else:
                graph = onnx.load(str(fp32_path), load_external_data=False)
                feeds = tokenize_examples(
                    request.calibration_examples,
                    request.tokenizer,
                    sequence_length=config.calibration.sequence_length,
                    input_names=[i.name for i in graph.graph.input],
                )
                details.update(self._quantize_static(fp32_path, graph, quantized_path, config, feeds, work_dir))
            shutil.move(quantized_path, fp32_path)
            details["int8_size_bytes"] = fp32_path.stat().st_size
            details["int8_ops"] = int8_op_counts(fp32_path)
        if request.task in EXTERNAL_DATA_TASKS:
            details["external_data_file"] = store_weights_externally(fp32_path)
        recipe = QuantizationRecipe(
            backend=self.name,
            task=request.task,
            quantization=config,
            source_model=str(request.model_path),
            details=details,
            hardware=cpu_info().to_dict(),
        )
        model = self._load_model(export_dir, recipe, model_save_dir=work, **request.load_kwargs)
        if request.tokenizer is not None:
            model.quantization_preprocessors = [request.tokenizer]
        return model

    def load(self, path: Path, recipe: QuantizationRecipe, **load_kwargs):
        return self._load_model(path, recipe, **load_kwargs)

    def saved_files(self, recipe: QuantizationRecipe) -> list[str]:
        external = recipe.details.get("external_data_file")
        return [*super().saved_files(recipe), MODEL_FILE, *([external] if isinstance(external, str) else [])]

    def file_problem(self, file: Path) -> ModelFileError | None:
        problem = super().file_problem(file)
        if problem is None and file.suffix == ".onnx":
            problem = onnx_file_problem(file)
        return problem

    def _load_model(self, path: Path, recipe: QuantizationRecipe, **load_kwargs):
        cls = self.model_class(recipe.task)
        if recipe.task == "text-generation":
            load_kwargs.setdefault("use_cache", True)
            # Explicit, so the choice is ours and measured (see CAUSAL_LM_IO_BINDING_DEFAULT), not optimum's.
            load_kwargs.setdefault("use_io_binding", CAUSAL_LM_IO_BINDING_DEFAULT)
        if recipe.details.get("per_row_tables"):
            load_kwargs["session_options"] = folding_session_options(load_kwargs.get("session_options"))
        if recipe.details.get("unfused_at_load"):
            load_kwargs["session_options"] = unfused_session_options(recipe.details["unfused_at_load"],
                                                                     load_kwargs.get("session_options"))
        model = cls.from_pretrained(path, file_name=MODEL_FILE, **load_kwargs)
        model.quantization_recipe = recipe
        return model

    @staticmethod
    def _smoothing_examples(request: QuantizationRequest, config: DynamicQuantConfig) -> tuple[list, str]:
        """What dynamic INT8 measures activations on for smoothing, and where they came from (or why there are none):
        the calibration data, else by default texts of random vocabulary words, which on fine-tuned MiniLM came
        close to real text (RESULTS.md, "Smoothing without calibration data")."""
        if request.calibration_examples:
            return request.calibration_examples, "calibration_dataset"
        if config.smoothing_without_data is None:
            return [], "no calibration_dataset given (smoothing_without_data=None)"
        if request.tokenizer is None:
            return [], "no calibration_dataset and no tokenizer given"
        pairs = request.task == "question-answering"
        examples = random_word_examples(request.tokenizer, config.smoothing_samples, pairs=pairs)
        return examples, "random-words" if examples else "no calibration_dataset given and no whole words in the vocabulary"

    def _rewrite_on_activations(
        self, src: Path, graph: onnx.ModelProto, config: DynamicQuantConfig, request: QuantizationRequest,
        model_config, alpha: float | None, default_statistic: str, nodes_to_exclude: list[str], work_dir: Path,
        details: dict,
    ) -> tuple[Path, list[str]]:
        """The FP32 rewrites dynamic INT8 measures activations for: smoothing, then outlier channels split off.

        Records each in `details` (what was done, or why not); returns the graph to quantize and the FP32 side-path
        nodes to keep out of quantization."""
        ratio = config.outlier_channel_ratio
        off = rewrites_off(alpha, ratio)
        details.update(off)
        wanted = [step for step in ("smoothing", "outlier_channels") if step not in off]
        if not wanted:
            return src, []
        if not details["graph_fused"]:  # e.g. decoders, whose past key/value inputs these measurements lack
            reason = "only measured on ONNX Runtime's fused encoder graphs"
        else:
            examples, source = self._smoothing_examples(request, config)
            reason = None if examples else source
        if reason is not None:
            details.update({step: {"applied": False, "reason": reason} for step in wanted})
            return src, []
        feeds = tokenize_examples(examples, request.tokenizer, sequence_length=smoothing_length(model_config),
                                  input_names=[i.name for i in graph.graph.input], pad=False)
        src, records, side_path_nodes = smooth_and_split(
            src, work_dir, feeds, set(nodes_to_exclude), alpha, config.resolved_smoothing_statistic(default_statistic),
            ratio)
        details.update({step: {"applied": record["applied"], "statistics": source, **record}
                        for step, record in records.items()})
        return src, side_path_nodes

    def _quantize_dynamic(
        self, src: Path, dst: Path, config: DynamicQuantConfig, export_dir: Path, work_dir: Path,
        request: QuantizationRequest,
    ) -> dict:
        from transformers import AutoConfig

        details: dict = {}
        model_config = AutoConfig.from_pretrained(export_dir)
        if config.optimize_graph:
            fused_path = work_dir / "fused.onnx"
            fused = fuse_graph(src, fused_path, model_config, fuse_norms=config.fuse_layer_norm)
            if fused is not None:
                details["fused_ops"] = fused
                if not config.fuse_layer_norm:
                    details["unfused_at_load"] = list(UNFUSED_AT_LOAD)
                src = fused_path
        details["graph_fused"] = "fused_ops" in details
        op_types = config.op_types or DYNAMIC_OP_TYPES
        graph = onnx.load(str(src), load_external_data=False)
        nodes_to_exclude, unused = excluded_nodes(graph, config, op_types)
        details["quantized_units"] = quantized_units(graph, op_types, nodes_to_exclude)
        pair_safe = config.reduce_range == "pair-safe"
        if pair_safe and not (config.per_channel and config.weight_type == "int8"):
            raise ConfigError("reduce_range='pair-safe' rescales per-channel s8 weights: it needs per_channel=True and weight_type='int8'.")
        reduce_range = False if pair_safe else resolve_reduce_range(config.reduce_range)
        bits = "7-bit" if reduce_range else "8-bit"
        weight_range = "pair-safe" if pair_safe else bits
        alpha = config.smoothing(DYNAMIC_SMOOTHING_ALPHA[bits])
        src, side_path_nodes = self._rewrite_on_activations(
            src, graph, config, request, model_config, alpha, DYNAMIC_SMOOTHING_STATISTIC[bits], nodes_to_exclude,
            work_dir, details)
        per_row = config.embeddings == "per-row" and EMBEDDING_OP in op_types and has_per_row_tables(graph)
        quantize_dynamic(
            src,
            dst,
            weight_type=WEIGHT_TYPES[config.weight_type],
            per_channel=config.per_channel,
            reduce_range=reduce_range,
            op_types_to_quantize=[op for op in op_types if not (per_row and op == EMBEDDING_OP)],
            nodes_to_exclude=nodes_to_exclude + side_path_nodes,
            extra_options=dict(_FLOAT_DEFAULT),
        )
        if pair_safe or per_row:
            quantized = onnx.load(str(dst))
            if pair_safe:
                details.update(make_pair_safe(quantized, onnx.load(str(src))))
            if per_row:
                details["per_row_tables"] = store_tables_per_row(quantized, nodes_to_exclude)
            onnx.save(quantized, str(dst))
        return {**details, "op_types": op_types, "reduce_range": reduce_range, "weight_range": weight_range,
                "excluded_nodes": nodes_to_exclude, "unused_exclude_patterns": unused}

    def _quantize_static(
        self, src: Path, model: onnx.ModelProto, dst: Path, config: StaticQuantConfig, feeds: list, work_dir: Path
    ) -> dict:
        # Static Q/DQ runs on the plain graph: ORT fuses Q/DQ pairs itself at session load, and quantizing
        # its transformer-fused graph breaks bias quantization of the pooler/classifier Gemms.
        op_types = config.op_types or STATIC_OP_TYPES
        ratio = config.resolved_outlier_channel_ratio(STATIC_OUTLIER_CHANNEL_RATIO)
        # With their outlier channels split off, the output projections quantize as well as the rest: heads only.
        nodes_to_exclude, unused = excluded_nodes(model, config, op_types, None if ratio is None else DEFAULT_EXCLUDE)
        quantize_matmuls = config.quantize_activation_matmuls(QUANTIZE_ACTIVATION_MATMULS)
        kept_matmuls = [] if quantize_matmuls else [
            name for name in activation_matmuls(model) if name not in nodes_to_exclude
        ]
        nodes_to_exclude += kept_matmuls
        alpha = config.smoothing(STATIC_SMOOTHING_ALPHA)
        records = rewrites_off(alpha, ratio)
        if alpha is not None or ratio is not None:
            src, rewrites, side_path_nodes = smooth_and_split(src, work_dir, feeds, set(nodes_to_exclude), alpha,
                                                              ratio=ratio)
            records.update(rewrites)
            nodes_to_exclude += side_path_nodes
        ranges, unbounded = calibrate(src, feeds, config.calibration, op_types, work_dir)
        # Nodes touching a mask tensor stay FP32: any scale for them would be meaningless.
        nodes_to_exclude += [
            node.name for node in model.graph.node
            if node.name not in nodes_to_exclude and unbounded.intersection([*node.input, *node.output])
        ]
        reduce_range = resolve_reduce_range(config.reduce_range)
        symmetric = config.symmetric_activations(SYMMETRIC_ACTIVATIONS)
        if save_tensors_data is not None:
            cache = work_dir / "calibration.json"
            save_tensors_data(ranges, cache)
            calibration = {"calibration_data_reader": None, "calibration_cache_path": cache}
        elif config.calibration.method == "minmax":  # same min/max ranges, computed again by quantize_static
            calibration = {"calibration_data_reader": ListDataReader(feeds)}
        else:
            raise ConfigError(
                f"{config.calibration.method} calibration needs onnxruntime >= 1.32 (this one is "
                f"{onnxruntime_version()}): use calibration='minmax'."
            )
        quantize_static(
            src,
            dst,
            **calibration,
            quant_format=FORMATS[config.format],
            op_types_to_quantize=op_types,
            per_channel=config.per_channel,
            reduce_range=reduce_range,
            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
            weight_type=WEIGHT_TYPES[config.weight_type],
            nodes_to_exclude=nodes_to_exclude,
            calibrate_method=ORT_METHODS[config.calibration.method],
            extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True},
        )
        return {
            "op_types": op_types,
            "reduce_range": reduce_range,
            "symmetric_activations": symmetric,
            **records,
            "activation_matmuls": {"quantized": quantize_matmuls, "kept_float": kept_matmuls},
            **({} if config.fuse_layer_norm else {"unfused_at_load": list(UNFUSED_AT_LOAD)}),
            "quantized_units": quantized_units(model, op_types, nodes_to_exclude),
            "calibration_samples": len(feeds),
            "unbounded_tensors": sorted(unbounded),
            "excluded_nodes": nodes_to_exclude,
            "unused_exclude_patterns": unused,
        }

    def _quantize_weight_only(self, src: Path, dst: Path, config: WeightOnlyQuantConfig) -> dict:
        # Runs on the plain (unfused) graph: ORT's fused Attention keeps the Q/K/V weights inside a contrib op
        # that MatMulNBits cannot replace, so fusing first would leave a third of an encoder's weights in FP32.
        try:
            from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer
        except ImportError as err:  # it imports onnx-ir, which older installs of the extra lack
            raise BackendUnavailableError(
                f"Weight-only quantization needs ONNX Runtime's MatMulNBits quantizer ({err}): "
                "pip install 'optimum-quantization[onnxruntime]' (it brings onnx-ir)."
            ) from err

        op_types = config.op_types or WEIGHT_ONLY_OP_TYPES
        model = onnx.load(str(src))
        # Exclusions are matched on the exported names, before Gemms are renamed "<name>_MatMul" below.
        nodes_to_exclude, unused = excluded_nodes(model, config, op_types)
        quant_ops = sorted({"MatMul" if op == "Gemm" else op for op in op_types})  # Gemms become MatMuls first
        if "MatMul" not in op_types:  # only the rewritten Gemms, not the graph's own MatMuls
            nodes_to_exclude = nodes_to_exclude + [n.name for n in model.graph.node if n.op_type == "MatMul"]
        algo = DefaultWeightOnlyQuantConfig(
            block_size=config.block_size,
            is_symmetric=config.symmetric,
            accuracy_level=config.accuracy_level,
            op_types_to_quantize=tuple(quant_ops),
            bits=config.bits,
        )
        gemms = {n.name for n in model.graph.node if n.op_type == "Gemm"}
        quantizer = MatMulNBitsQuantizer(
            model, nodes_to_exclude=[f"{n}_MatMul" if n in gemms else n for n in nodes_to_exclude], algo_config=algo
        )
        if "Gemm" in op_types:  # GPT-2's Conv1D and BERT's pooler export as Gemm: MatMul + Add carries them
            quantizer.model.replace_gemm_with_matmul()
        tied = _fold_constant_transposes(quantizer.model.model, set(quantizer.nodes_to_exclude))
        candidates = [n.name for n in quantizer.model.model.graph.node if n.op_type in quant_ops and n.name not in quantizer.nodes_to_exclude]
        nbits_logger = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
        level = nbits_logger.level
        nbits_logger.setLevel(logging.WARNING)  # it logs every node of the graph at INFO
        try:
            quantizer.process()
        finally:
            nbits_logger.setLevel(level)
        quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)
        suffix = f"_Q{config.bits}"
        quantized = {n.name[: -len(suffix)] for n in quantizer.model.model.graph.node if n.name.endswith(suffix)}
        return {
            "op_types": op_types,
            "bits": config.bits,
            "block_size": config.block_size,
            "symmetric": config.symmetric,
            "accuracy_level": config.accuracy_level,
            "graph_fused": False,
            "quantized_nodes": len(quantized),
            "excluded_nodes": nodes_to_exclude,
            "tied_weights_materialised": tied,
            # Products of two activations (attention scores, context) have no weight to store in fewer bits.
            "not_quantized_nodes": [name for name in candidates if name not in quantized],
            "unused_exclude_patterns": unused,
        }


def onnx_file_problem(path: Path) -> ModelFileError | None:
    """The error saying why ONNX Runtime cannot read the graph `path` or the weights it keeps beside it, or None when
    the graph parses and its weight files hold every byte it reads from them."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf's DecodeError, or onnx's own
        return damaged_file(path, f"not an ONNX model: {err}")
    if not model.HasField("graph") or not model.graph.node:
        return damaged_file(path, "it holds no ONNX graph")
    needed: dict[str, int] = {}
    for tensor in model.graph.initializer:
        if onnx.external_data_helper.uses_external_data(tensor):
            info = {entry.key: entry.value for entry in tensor.external_data}
            end = int(info.get("offset") or 0) + int(info.get("length") or 0)
            needed[info["location"]] = max(needed.get(info["location"], 0), end)
    for location, end in needed.items():
        data = path.parent / location
        if not data.is_file():
            return ModelFileError(f"{data} is missing: {path.name} keeps its weights in it. Save or download the model "
                                  "again (copy the whole folder).")
        if data.stat().st_size < end:
            return damaged_file(data, f"{data.stat().st_size} bytes, {path.name} reads up to byte {end}")
    return None


def store_weights_externally(path: Path) -> str | None:
    """Move the graph's initializers into one `<model>.onnx_data` file beside it; returns its name (None if already so)."""
    model = onnx.load(str(path), load_external_data=False)
    if any(onnx.external_data_helper.uses_external_data(t) for t in model.graph.initializer):
        return None
    location = path.name + "_data"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=location, size_threshold=1024)
    return location


def _fold_constant_transposes(model: onnx.ModelProto, skip: set[str]) -> list[str]:
    """Give each MatMul whose weight is `Transpose(initializer)` its own transposed initializer.

    Tied embeddings export the LM head that way (`lm_head` = `Transpose(wte)`), which MatMulNBits skips as
    a non-constant weight. The embedding table itself stays FP32 for the Gather.
    """
    from onnx import numpy_helper

    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    folded = []
    for node in graph.node:
        if node.op_type != "MatMul" or node.name in skip:
            continue
        transpose = producers.get(node.input[1])
        if transpose is None or transpose.op_type != "Transpose" or transpose.input[0] not in initializers:
            continue
        perm = next((list(a.ints) for a in transpose.attribute if a.name == "perm"), None)
        weight = numpy_helper.to_array(initializers[transpose.input[0]])
        if weight.ndim != 2 or perm not in (None, [1, 0]):
            continue
        name = f"{transpose.input[0]}_transposed_for_{len(folded)}"
        graph.initializer.append(numpy_helper.from_array(weight.T.copy(), name))
        node.input[1] = name
        folded.append(node.name)
    return folded
