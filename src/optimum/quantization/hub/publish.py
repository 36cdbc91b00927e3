"""Publish a saved quantized model folder to the Hub: one commit with every file and a generated model card."""

from __future__ import annotations

import logging
from pathlib import Path

from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi, constants, get_token
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, HFValidationError, filter_repo_objects, validate_repo_id

from ..errors import ConfigError, HubAuthenticationError, ModelNotFoundError
from ..recipe import RECIPE_FILE, find_recipe
from .card import CARD_FILE, method_name, model_card_for_folder
from .failures import hub_errors, redact

logger = logging.getLogger(__name__)

# A commit is all-or-nothing on the Hub, and it is the only call that writes files.
NOTHING_PUBLISHED = " No file was published: the upload is a single commit, applied whole or not at all."


def _in_repo(path_in_repo: str, relative: str) -> str:
    return f"{path_in_repo.strip('/')}/{relative}" if path_in_repo.strip("/") else relative


def folder_additions(folder: Path, path_in_repo: str = "", only=None) -> list[CommitOperationAdd]:
    """Every file of `folder` (or those named in `only`), subfolders included, except its README.md (the card is
    added separately).

    The filter is huggingface_hub's own, with the patterns `upload_folder` ignores (.git, .cache/huggingface).
    """
    files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
    if only is not None:
        files = {rel: path for rel, path in files.items() if rel in set(only)}
    kept = filter_repo_objects(files, ignore_patterns=[*DEFAULT_IGNORE_PATTERNS, CARD_FILE])
    return [CommitOperationAdd(path_in_repo=_in_repo(path_in_repo, rel), path_or_fileobj=files[rel]) for rel in kept]


def _resolve_token(token):
    """The token to send: the one given, else HF_TOKEN or the stored login. Checked before any network call."""
    token = token if token is not None else get_token()
    if not token:
        raise HubAuthenticationError(
            "Pushing needs a Hugging Face token with write access: pass token=..., set HF_TOKEN, or run `hf auth login`."
        )
    return token


def push_folder_to_hub(
    folder,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
    path_in_repo: str = "",
    only_model_files: bool = False,
) -> CommitInfo:
    """Publish a folder written by `save_pretrained` of a quantized model as one commit, with its model card.

    With `only_model_files=True` only the files the save wrote (listed in the recipe) are published, as
    `save_pretrained(..., push_to_hub=True)` does, so other files in the folder stay local.

    Creates the repository (and the branch `revision`) when missing. The card is generated from the folder's
    `quantization_config.json` and committed as README.md beside the model; a README.md already in the folder
    is kept as written, with our metadata added. The local folder is never modified.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelNotFoundError(f"{folder} is not a folder: pass the folder written by save_pretrained.")
    recipe = find_recipe(folder)
    if recipe is None:
        raise ConfigError(
            f"{folder} holds no {RECIPE_FILE}, so it is not a model quantized by optimum-quantization: quantize and "
            "save it first (`optimum-quantize --model ... --output DIR`), then push that folder."
        )
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ConfigError(f"{repo_id!r} is not a valid Hub repository id (expected 'name' or 'org/name'): {err}") from None
    token = _resolve_token(token)
    card = model_card_for_folder(folder, recipe, repo_id, revision=revision, subfolder=path_in_repo.strip("/"))
    operations = [
        *folder_additions(folder, path_in_repo, only=recipe.owned_files() if only_model_files else None),
        CommitOperationAdd(path_in_repo=_in_repo(path_in_repo, CARD_FILE), path_or_fileobj=str(card).encode("utf-8")),
    ]
    method = method_name(recipe) or "not quantized"
    message = commit_message or f"Upload {recipe.task} model saved by optimum-quantization ({recipe.backend}, {method})"
    api = HfApi()
    with hub_errors("pushing to", repo_id, token=token, revision=revision, aftermath=NOTHING_PUBLISHED):
        try:
            api.create_repo(repo_id, private=private, exist_ok=True, token=token)
            if revision and revision != constants.DEFAULT_REVISION:
                api.create_branch(repo_id, branch=revision, exist_ok=True, token=token)
            info = api.create_commit(repo_id, operations, commit_message=message, revision=revision, token=token)
        except ValueError as err:
            if "Invalid metadata in README.md" not in str(err):  # huggingface_hub's wording for a refused card
                raise
            raise ConfigError(f"The Hub refused the metadata of {CARD_FILE} in {folder}: {redact(str(err), token)}") from None
    logger.info("Published %s to %s in one commit (%s).", folder, repo_id, info.oid)
    return info
