"""Fetch a published quantized model from the Hub into the local cache, so it loads like a saved folder."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import hf_hub_download, snapshot_download
from huggingface_hub.errors import EntryNotFoundError, HFValidationError

from ..recipe import RECIPE_FILE
from .failures import hub_errors


def download_quantized_model(
    repo_id: str, *, subfolder: str = "", revision: str | None = None, token=None, cache_dir=None
) -> Path | None:
    """The local folder of a quantized model published at `repo_id`, or None when the repo holds no recipe.

    Only `quantization_config.json` is fetched first, so an FP32 checkpoint is never downloaded here. Both
    calls go through huggingface_hub's cache: with HF_HUB_OFFLINE set, a cached snapshot still loads.
    """
    subfolder = subfolder.strip("/")
    location = dict(revision=revision, token=token, cache_dir=cache_dir)
    with hub_errors("downloading", repo_id, token=token, revision=revision):
        try:
            hf_hub_download(repo_id, RECIPE_FILE, subfolder=subfolder or None, **location)
        except HFValidationError:
            return None  # not a Hub id: the caller reports the missing model
        except EntryNotFoundError:
            # No recipe: an FP32 checkpoint to export. The local variant of this error (Hub unreachable and
            # nothing cached) also lands here, so the export path can still use a cached FP32 checkpoint.
            return None
        snapshot = snapshot_download(repo_id, allow_patterns=f"{subfolder}/*" if subfolder else None, **location)
    return Path(snapshot) / subfolder
