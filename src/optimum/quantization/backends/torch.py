"""PyTorch backend: dynamic INT8 of `nn.Linear` in eager mode (the baseline of the PyTorch BERT tutorial).

The model stays a transformers `PreTrainedModel`, so `pipeline()` and `generate()` work unchanged.
Saved folders hold INT8 weights with their scales in safetensors (no pickles); loading rebuilds the
architecture from its config, applies the same module swap and copies the saved INT8 weights in.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..configuration import DynamicQuantConfig
from ..errors import ConfigError, ModelFileError
from ..export import safetensors_file_problem
from ..hardware import cpu_info
from ..recipe import QuantizationRecipe
from ..tasks import TASKS
from .base import Backend, QuantizationRequest, QuantizedModelMixin, check_patterns_used, matches_any

WEIGHTS_FILE = "model.safetensors"
INT8_SUFFIXES = (".weight_int8", ".weight_scale", ".weight_zero_point")


def _quantize_dynamic(model: torch.nn.Module, module_names: list[str], per_channel: bool) -> None:
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated upstream but is the baseline we match
        warnings.simplefilter("ignore")
        quantize_dynamic(model, {name: qconfig for name in module_names}, dtype=torch.qint8, inplace=True)


def _dynamic_linears(model: torch.nn.Module):
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return {name: module for name, module in model.named_modules() if isinstance(module, DynamicLinear)}


class TorchQuantizedModelMixin(QuantizedModelMixin):
    """Saves INT8 linear weights + FP32 rest as safetensors, beside the config."""

    def _save_model_files(self, directory: Path) -> None:
        self.config.save_pretrained(directory)
        tensors, seen = {}, set()
        int8_modules = _dynamic_linears(self)
        for name, tensor in self.state_dict().items():
            if not isinstance(tensor, torch.Tensor) or name.rpartition(".")[0] in int8_modules:
                continue  # INT8 modules are written below, from their packed weights
            if tensor.data_ptr() in seen:  # tied weights (e.g. lm_head): re-tied by tie_weights() on load
                continue
            seen.add(tensor.data_ptr())
            tensors[name] = tensor.detach().contiguous()
        for name, module in int8_modules.items():
            weight, bias = module._weight_bias()
            per_channel = weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric)
            scale = weight.q_per_channel_scales() if per_channel else torch.tensor([weight.q_scale()])
            zero_point = weight.q_per_channel_zero_points() if per_channel else torch.tensor([weight.q_zero_point()])
            tensors[f"{name}.weight_int8"] = weight.int_repr().contiguous()
            tensors[f"{name}.weight_scale"] = scale.to(torch.float64).contiguous()
            tensors[f"{name}.weight_zero_point"] = zero_point.to(torch.int64).contiguous()
            if bias is not None:
                tensors[f"{name}.bias"] = bias.detach().contiguous()
        save_file(tensors, str(Path(directory) / WEIGHTS_FILE), metadata={"format": "pt", "quantization": "torch-dynamic-int8"})


@functools.lru_cache(maxsize=None)
def quantized_class(base: type) -> type:
    """`Quantized<BertForSequenceClassification>`: the transformers class with our saving mixin in front."""
    # Same name as the transformers class: pipelines check the class name against their task tables.
    return type(base.__name__, (TorchQuantizedModelMixin, base), {"__module__": __name__, "__qualname__": base.__qualname__})


class TorchBackend(Backend):
    supported_configs = (DynamicQuantConfig,)
    model_classes = {task: TorchQuantizedModelMixin for task in TASKS}

    def accepted_load_kwargs(self, task: str) -> set[str]:
        return set()  # the models are transformers' own, loaded as they were saved: nothing to pass on

    def check_supports(self, task, config) -> None:
        super().check_supports(task, config)
        if config is not None and config.weight_type != "int8":
            raise ConfigError("The torch backend quantizes weights to int8 only; set weight_type='int8'.")
        if config is not None and config.head_token_only is True:
            raise ConfigError(
                "head_token_only changes the exported graph; the torch backend keeps the PyTorch model whole (its "
                "users may ask for every token's hidden states). Leave it at 'auto' or use an exporting backend."
            )

    def _auto_class(self, task: str):
        import transformers

        return getattr(transformers, TASKS[task])

    def quantize(self, request: QuantizationRequest):
        model = self._auto_class(request.task).from_pretrained(request.model_path, **request.hub_kwargs).eval()
        details = {}
        config = request.config
        if config is not None:
            patterns = config.exclusion_patterns()
            linears, excluded, used = [], [], set()
            for name, module in model.named_modules():
                if isinstance(module, torch.nn.Linear):
                    pattern = matches_any(name, patterns)
                    if pattern:
                        used.add(pattern)
                        excluded.append(name)
                    else:
                        linears.append(name)
            _quantize_dynamic(model, linears, config.per_channel)
            details = {
                "quantized_modules": len(linears),
                "quantized_units": linears,  # each an `exclude` pattern keeping that nn.Linear in FP32
                "excluded_modules": sorted(excluded),
                "unused_exclude_patterns": check_patterns_used(config.exclude, used, "nn.Linear module"),
                # fbgemm's dynamic linear quantizes activations with a reduced (7-bit) range on every CPU.
                "reduce_range": "activations (fbgemm default)",
                "quantized_engine": torch.backends.quantized.engine,
            }
        recipe = QuantizationRecipe(
            backend=self.name, task=request.task, quantization=config, source_model=str(request.model_path),
            details=details, hardware=cpu_info().to_dict(),
        )
        return self._finish(model, recipe, request.tokenizer)

    def saved_files(self, recipe: QuantizationRecipe) -> list[str]:
        return [*super().saved_files(recipe), WEIGHTS_FILE]

    def file_problem(self, file: Path) -> ModelFileError | None:
        problem = super().file_problem(file)
        if problem is None and file.suffix == ".safetensors":
            problem = safetensors_file_problem(file)
        return problem

    def load(self, path: Path, recipe: QuantizationRecipe, **load_kwargs):
        from transformers import AutoConfig

        model_config = AutoConfig.from_pretrained(path)
        model = self._auto_class(recipe.task).from_config(model_config).eval()
        tensors = load_file(str(Path(path) / WEIGHTS_FILE))
        int8_modules = sorted({key[: -len(suffix)] for key in tensors for suffix in INT8_SUFFIXES if key.endswith(suffix)})
        plain = {k: v for k, v in tensors.items() if not k.endswith(INT8_SUFFIXES)}
        # Load the FP32 part first: the INT8 modules' float weights are absent and set after the swap.
        missing, unexpected = model.load_state_dict(plain, strict=False)
        tied = set(getattr(model, "_tied_weights_keys", None) or [])
        int8_weights = {f"{name}.weight" for name in int8_modules}
        missing = [k for k in missing if k not in tied and k not in int8_weights]
        if missing or unexpected:
            raise ConfigError(
                f"{Path(path) / WEIGHTS_FILE} does not match the architecture in its config.json "
                f"(missing: {missing[:5]}, unexpected: {unexpected[:5]}): the folder is damaged or was edited."
            )
        if recipe.quantization is not None:
            _quantize_dynamic(model, int8_modules, recipe.quantization.per_channel)
        quantized = _dynamic_linears(model)
        for name in int8_modules:
            scale, zero_point, int8 = (tensors[f"{name}.weight_{k}"] for k in ("scale", "zero_point", "int8"))
            if scale.numel() > 1:
                weight = torch._make_per_channel_quantized_tensor(int8, scale, zero_point, 0)
            else:
                weight = torch._make_per_tensor_quantized_tensor(int8, float(scale), int(zero_point))
            quantized[name].set_weight_bias(weight, tensors.get(f"{name}.bias"))
        model.tie_weights()
        return self._finish(model, recipe, None)

    @staticmethod
    def _finish(model, recipe, tokenizer):
        model.__class__ = quantized_class(type(model))
        model.quantization_recipe = recipe
        if tokenizer is not None:
            model.quantization_preprocessors = [tokenizer]
        return model
