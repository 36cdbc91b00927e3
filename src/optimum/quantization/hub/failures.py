"""huggingface_hub's exceptions turned into ours, with a message that says what to do and never shows the token."""

from __future__ import annotations

import contextlib

import requests
from huggingface_hub import constants
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from ..errors import HubAuthenticationError, HubError, ModelNotFoundError, QuantizationError


def redact(text: str, token) -> str:
    """`text` with the token replaced: our messages never quote it, but a server message could echo it back."""
    return text.replace(token, "<token>") if isinstance(token, str) and token else text


def _status(err: HfHubHTTPError) -> int | None:
    return getattr(err.response, "status_code", None)


def _server_says(err: HfHubHTTPError) -> str:
    return f" (the Hub says: {err.server_message.strip()})" if getattr(err, "server_message", None) else ""


def translate(err: Exception, doing: str, repo_id: str, *, revision=None, aftermath: str = "") -> QuantizationError:
    """Our error for a failure of huggingface_hub while `doing` (e.g. "pushing to") `repo_id`."""
    where = constants.ENDPOINT
    if isinstance(err, OfflineModeIsEnabled):
        return HubError(f"HF_HUB_OFFLINE is set, so {where} cannot be reached while {doing} {repo_id}: unset it (or set it to 0).{aftermath}")
    if isinstance(err, (requests.ConnectionError, requests.Timeout)):
        return HubError(
            f"Could not reach the Hub at {where} while {doing} {repo_id} ({type(err).__name__}): check the network "
            f"connection and HF_ENDPOINT.{aftermath}"
        )
    if isinstance(err, LocalEntryNotFoundError):  # unreachable or offline, and not in the local cache
        return HubError(
            f"{repo_id} could not be fetched from {where} and is not in the local cache: connect to the Hub (and "
            f"unset HF_HUB_OFFLINE) once to download it.{aftermath}"
        )
    if isinstance(err, GatedRepoError):
        return HubAuthenticationError(f"{repo_id} is gated: request access on its Hub page, then use a token of an account that has it.")
    if isinstance(err, RevisionNotFoundError):
        return ModelNotFoundError(f"Revision {revision!r} does not exist in {repo_id} on {where}.{aftermath}")
    if isinstance(err, RepositoryNotFoundError):
        return ModelNotFoundError(
            f"Repository {repo_id} was not found on {where}, or it is private and the token cannot see it "
            f"(HTTP {_status(err)}): check the id, and pass a token with access (token= or HF_TOKEN).{aftermath}"
        )
    status = _status(err)
    if status == 401:
        return HubAuthenticationError(
            f"The Hub rejected the token (401 Unauthorized) while {doing} {repo_id}: it is invalid or expired. "
            f"Log in again (`hf auth login`) or pass a valid token.{aftermath}"
        )
    if status == 403:
        return HubAuthenticationError(
            f"The token may not do this (403 Forbidden) while {doing} {repo_id}{_server_says(err)}: use a token with "
            f"write access to that namespace.{aftermath}"
        )
    return HubError(f"The Hub answered HTTP {status} while {doing} {repo_id}{_server_says(err)}.{aftermath} Retry later.")


@contextlib.contextmanager
def hub_errors(doing: str, repo_id: str, *, token=None, revision=None, aftermath: str = ""):
    """Re-raise huggingface_hub's network and HTTP errors as ours, with the token redacted from the message."""
    try:
        yield
    except (HfHubHTTPError, requests.ConnectionError, requests.Timeout, OfflineModeIsEnabled) as err:
        ours = translate(err, doing, repo_id, revision=revision, aftermath=aftermath)
        # Chain the original for its URL and request id, unless its own message quotes the token.
        cause = None if redact(str(err), token) != str(err) else err
        raise type(ours)(redact(str(ours), token)) from cause
