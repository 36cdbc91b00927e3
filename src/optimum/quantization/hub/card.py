"""The model card (README.md) of a published quantized model, built from its `quantization_config.json`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

from ..recipe import QuantizationRecipe
from ..registry import pip_install_target
from ..search_report import REPORT_DETAILS_KEY, search_report_markdown

CARD_FILE = "README.md"
LIBRARY_NAME = "optimum-quantization"
RECIPE_METADATA_KEY = "quantization_config"  # the card's metadata key holding the whole recipe
TEMPLATE = Path(__file__).resolve().parent.parent / "data" / "model_card_template.md"

# task -> the class that loads it (modeling.QUANT_MODEL_CLASSES; a test keeps the two in step).
LOADING_CLASSES = {
    "text-classification": "QuantModelForSequenceClassification",
    "question-answering": "QuantModelForQuestionAnswering",
    "token-classification": "QuantModelForTokenClassification",
    "feature-extraction": "QuantModelForFeatureExtraction",
    "text-generation": "QuantModelForCausalLM",
}


def hub_base_model(source_model: str) -> str | None:
    """`source_model` when it is a Hub id; None for a local path, which is no valid `base_model`."""
    try:
        validate_repo_id(source_model)
    except HFValidationError:
        return None
    return source_model


def kept_fp32_reason(recipe: QuantizationRecipe) -> str | None:
    """Why a quantization request was stored in FP32 (OpenVINO's precision="auto" measured FP32 fastest), or None."""
    precision = recipe.details.get("precision") or {}
    return precision.get("reason") if precision.get("chosen") == "fp32" else None


def measured_choice(recipe: QuantizationRecipe) -> str:
    """The card's sentence on what OpenVINO's precision="auto" measured and stored, or "" where it did not measure."""
    precision = recipe.details.get("precision") or {}
    if precision.get("requested") != "auto":
        return ""
    if precision.get("chosen") == "fp32":
        return f' INT8 was requested with `precision="auto"` and FP32 was kept: {precision["reason"]}.'
    return (f' `precision="auto"` timed static INT8, INT8 weights and FP32 on the quantizing CPU and stored '
            f'**{precision["chosen"]}**: {precision["reason"]}.')


def method_name(recipe: QuantizationRecipe) -> str | None:
    """"dynamic" / "static" (from the config class name), or None for an FP32 model; a static request that stored
    INT8 weights (OpenVINO's precision="int8-weights" or "auto") is "weightonly", as WeightOnlyQuantConfig."""
    if recipe.quantization is None or kept_fp32_reason(recipe):
        return None
    if (recipe.details.get("precision") or {}).get("chosen") == "int8-weights":
        return "weightonly"
    return type(recipe.quantization).__name__.removesuffix("QuantConfig").lower()


def card_metadata(recipe: QuantizationRecipe) -> ModelCardData:
    method = method_name(recipe)
    tags = [LIBRARY_NAME, recipe.backend]
    if method is not None:
        tags += ["quantized", "int8", f"{method}-quantization"]
    return ModelCardData(
        base_model=hub_base_model(recipe.source_model),
        library_name=LIBRARY_NAME,
        pipeline_tag=recipe.task,
        tags=tags,
        **{RECIPE_METADATA_KEY: recipe.to_dict()},
    )


def _rows(data: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Flatten nested dicts into (dotted name, printable value) rows for a Markdown table."""
    rows = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            rows += _rows(value, f"{name}.")
        elif isinstance(value, float):
            rows.append((name, f"{value:.4g}"))
        elif isinstance(value, (list, tuple)):
            rows.append((name, ", ".join(str(v) for v in value) or "(none)"))
        else:
            rows.append((name, str(value)))
    return rows


def _describe_hardware(hardware: dict[str, Any]) -> str:
    if not hardware:
        return "not recorded"
    isa = ", ".join(hardware.get("isa") or []) or "no SIMD flags read"
    return f"{hardware.get('model', 'unknown CPU')} ({isa}; VNNI: {hardware.get('has_vnni', 'unknown')}), {hardware.get('cores', '?')} cores"


def _load_args(repo_id: str, revision: str | None, subfolder: str) -> str:
    args = [repr(repo_id)]
    if subfolder:
        args.append(f"subfolder={subfolder!r}")
    if revision and revision != "main":
        args.append(f"revision={revision!r}")
    return ", ".join(args)


def build_model_card(
    recipe: QuantizationRecipe, repo_id: str, *, revision: str | None = None, subfolder: str = ""
) -> ModelCard:
    """A card whose metadata holds base_model, library_name, pipeline_tag, tags and the full recipe."""
    method = method_name(recipe)
    base_model = hub_base_model(recipe.source_model)
    source = f"[`{base_model}`](https://huggingface.co/{base_model})" if base_model else "a local checkpoint"
    if method is None:
        summary = f"An FP32 {recipe.task} export of {source} for the `{recipe.backend}` backend, saved by {LIBRARY_NAME}."
    else:
        summary = f"{source[0].upper()}{source[1:]} quantized to INT8 ({method}) for the `{recipe.backend}` backend with {LIBRARY_NAME}, for {recipe.task}."
    summary += measured_choice(recipe)
    settings = dataclasses.asdict(recipe.quantization) if recipe.quantization is not None else {}
    return ModelCard.from_template(
        card_metadata(recipe),
        template_path=str(TEMPLATE),
        title=repo_id.rpartition("/")[2],
        summary=summary,
        install=pip_install_target(recipe.backend),
        class_name=LOADING_CLASSES.get(recipe.task, "QuantModelForSequenceClassification"),
        load_args=_load_args(repo_id, revision, subfolder),
        task=recipe.task,
        metrics=_rows(recipe.metrics),
        hardware=_describe_hardware(recipe.hardware),
        settings=_rows(settings),
        versions=", ".join(f"{name} {version}" for name, version in sorted(recipe.versions.items())) or "not recorded",
        recipe_json=json.dumps(recipe.to_dict(), indent=2, sort_keys=True),
        auto_search=search_report_markdown(recipe.details[REPORT_DETAILS_KEY]) if REPORT_DETAILS_KEY in recipe.details else "",
    )


def merge_into_card(text: str, recipe: QuantizationRecipe) -> ModelCard:
    """Keep a user-written card's text; add our metadata where it sets none, our tags, and the current recipe."""
    card = ModelCard(text)
    ours = card_metadata(recipe)
    for key in ("base_model", "library_name", "pipeline_tag"):
        if card.data.get(key) is None and ours.get(key) is not None:
            card.data[key] = ours.get(key)
    card.data.tags = list(dict.fromkeys([*(card.data.tags or []), *ours.tags]))
    card.data[RECIPE_METADATA_KEY] = ours.get(RECIPE_METADATA_KEY)  # the folder's recipe is the truth
    return card


def model_card_for_folder(folder: Path, recipe: QuantizationRecipe, repo_id: str, *, revision=None, subfolder="") -> ModelCard:
    """The card to publish with `folder`: its own README.md merged with our metadata, or a generated one."""
    existing = Path(folder) / CARD_FILE
    if existing.is_file():
        return merge_into_card(existing.read_text(encoding="utf-8"), recipe)
    return build_model_card(recipe, repo_id, revision=revision, subfolder=subfolder)

