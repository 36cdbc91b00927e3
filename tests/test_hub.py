"""Publishing to the Hub and loading back, against tests/hub_server.py: an in-memory Hub on 127.0.0.1.

The real huggingface_hub client does every request; only where it sends them is changed (see `hub`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers
from conftest import SENTENCES
from hub_server import INITIAL_FILES, FakeHub
from huggingface_hub import HfApi, ModelCard, constants, file_download, hf_hub_url, metadata_load
from huggingface_hub.utils import reset_sessions

from optimum.quantization import (
    ConfigError,
    HubAuthenticationError,
    HubError,
    ModelNotFoundError,
    QuantModelForSequenceClassification,
)
from optimum.quantization.commands.cli import main
from optimum.quantization.hub import build_model_card, download_quantized_model, push_folder_to_hub
from optimum.quantization.hub.card import LOADING_CLASSES
from optimum.quantization.modeling import QUANT_MODEL_CLASSES
from optimum.quantization.recipe import QuantizationRecipe
from optimum.quantization.registry import get_backend

TOKEN = "hf_TestTokenThatMustNeverBePrinted0123456789"
WRONG_TOKEN = "hf_WrongTokenThatMustNeverBePrintedEither987"


def _point_huggingface_hub_at(monkeypatch, url: str, *, offline: bool = False) -> None:
    """Send huggingface_hub's requests to `url`, in this process.

    huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE into `constants` when it is imported (file_download
    also keeps its own copy of the URL template), and caches one HTTP session per thread that refuses every
    request when offline mode was on at creation. `make test` sets HF_HUB_OFFLINE=1 and the library is long
    imported by now, so setting the environment alone would change nothing: patch what it read, and drop
    cached sessions. transformers keeps its own offline flag for the same reason. The environment is set as
    well, for subprocesses. The subprocess CLI test below checks the plain HF_ENDPOINT route end to end.
    """
    template = url + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setattr(file_download, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(transformers.utils.hub, "_is_offline_mode", offline)
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")
    reset_sessions()
    # Fail here, loudly, if a huggingface_hub upgrade reads its endpoint from somewhere else.
    assert hf_hub_url("org/name", "f").startswith(url) and HfApi().endpoint == url


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A fresh fake Hub, with huggingface_hub pointed at it, no implicit token and a private cache."""
    server = FakeHub(TOKEN).start()
    _point_huggingface_hub_at(monkeypatch, server.url)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token-file"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-stored-tokens"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    yield server
    server.stop()
    reset_sessions()  # the next session is built after monkeypatch restores the constants


@pytest.fixture(scope="module")
def ort_model(tiny_dir, tmp_path_factory):
    """A tiny text classifier, dynamically quantized on onnxruntime once for this module."""
    with contextlib.chdir(tmp_path_factory.mktemp("ort-work")):  # ORT tools may drop files in the cwd
        return QuantModelForSequenceClassification.from_pretrained(tiny_dir("text-classification"), quantize="dynamic")


@pytest.fixture
def tokenizer(tiny_dir):
    return transformers.AutoTokenizer.from_pretrained(tiny_dir("text-classification"))


def logits(model, tokenizer) -> np.ndarray:
    with torch.no_grad():
        return np.asarray(model(**tokenizer(SENTENCES, return_tensors="pt", padding=True)).logits)


def _never_quantize(monkeypatch, backend: str) -> None:
    def refuse(self, request):
        raise AssertionError("a published quantized model must load as saved, not be exported and quantized again")

    monkeypatch.setattr(type(get_backend(backend)), "quantize", refuse)


def _log_everything(caplog) -> None:
    # optimum and huggingface_hub give their loggers their own levels (WARNING): lower those too.
    for name in (None, "optimum", "optimum.quantization", "huggingface_hub", "transformers"):
        caplog.set_level(logging.DEBUG, logger=name)


def _assert_no_token_shown(capsys, caplog, *texts) -> None:
    out, err = capsys.readouterr()
    for token in (TOKEN, WRONG_TOKEN):
        for where, text in (("stdout", out), ("stderr", err), ("log", caplog.text), *(("error", t) for t in texts)):
            assert token not in text, f"a token appeared in {where}"


def _saved_files(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# ------------------------------------------------------------------------------------------------ round trips


def test_onnxruntime_model_is_pushed_in_one_commit_and_loads_back_identical(
    hub, ort_model, tokenizer, tmp_path, monkeypatch, capsys, caplog
):
    _log_everything(caplog)
    expected = logits(ort_model, tokenizer)
    info = ort_model.push_to_hub("org/tiny-int8", token=TOKEN)

    assert len(hub.called("commit")) == 1 and info.oid == hub.repos["org/tiny-int8"].refs["main"]
    ort_model.save_pretrained(tmp_path / "local")
    published = hub.files("org/tiny-int8")
    assert published == {**INITIAL_FILES, **_saved_files(tmp_path / "local"), "README.md": published["README.md"]}

    _never_quantize(monkeypatch, "onnxruntime")
    loaded = QuantModelForSequenceClassification.from_pretrained("org/tiny-int8")
    np.testing.assert_array_equal(logits(loaded, tokenizer), expected)
    assert loaded.quantization_recipe == ort_model.quantization_recipe
    loaded.save_pretrained(tmp_path / "resaved")  # the saved tokenizer came along from the Hub
    assert set(_saved_files(tmp_path / "resaved")) == set(_saved_files(tmp_path / "local"))
    _assert_no_token_shown(capsys, caplog)


def test_torch_model_save_pretrained_with_push_to_hub_loads_back_identical(hub, tiny_dir, tokenizer, tmp_path, monkeypatch):
    model = QuantModelForSequenceClassification.from_pretrained(tiny_dir("text-classification"), backend="torch", quantize="dynamic")
    expected = logits(model, tokenizer)
    model.save_pretrained(tmp_path / "saved", push_to_hub=True, repo_id="org/tiny-torch-int8", token=TOKEN, private=True)

    assert (tmp_path / "saved" / "quantization_config.json").is_file()  # saved locally too, as transformers does
    assert hub.repos["org/tiny-torch-int8"].private
    assert hub.files("org/tiny-torch-int8")["model.safetensors"] == (tmp_path / "saved" / "model.safetensors").read_bytes()
    _never_quantize(monkeypatch, "torch")
    with pytest.raises(ModelNotFoundError, match="private and the token cannot see it"):
        QuantModelForSequenceClassification.from_pretrained("org/tiny-torch-int8")  # the token is what gives access
    loaded = QuantModelForSequenceClassification.from_pretrained("org/tiny-torch-int8", token=TOKEN)
    np.testing.assert_array_equal(logits(loaded, tokenizer), expected)


def test_subfolder_revision_cache_dir_and_offline_reload(hub, ort_model, tokenizer, tmp_path, monkeypatch):
    ort_model.save_pretrained(tmp_path / "saved")
    push_folder_to_hub(tmp_path / "saved", "org/variants", token=TOKEN, path_in_repo="int8", revision="v1")

    assert hub.files("org/variants") == INITIAL_FILES  # main untouched: the commit went to branch v1
    assert {"int8/model.onnx", "int8/quantization_config.json", "int8/README.md"} <= set(hub.files("org/variants", "v1"))
    assert download_quantized_model("org/variants", subfolder="int8") is None  # not on main

    cache = tmp_path / "cache"
    kwargs = dict(subfolder="int8", revision="v1", cache_dir=cache)
    loaded = QuantModelForSequenceClassification.from_pretrained("org/variants", **kwargs)
    np.testing.assert_array_equal(logits(loaded, tokenizer), logits(ort_model, tokenizer))
    assert list(cache.glob("models--org--variants/snapshots/*/int8/model.onnx"))
    assert not list(cache.glob("models--org--variants/snapshots/*/README.md"))  # only the subfolder was fetched

    _point_huggingface_hub_at(monkeypatch, hub.url, offline=True)
    requests_before = len(hub.requests)
    offline = QuantModelForSequenceClassification.from_pretrained("org/variants", **kwargs)
    assert len(hub.requests) == requests_before  # served from the cache alone
    np.testing.assert_array_equal(logits(offline, tokenizer), logits(ort_model, tokenizer))


def test_fp32_repo_is_still_exported_and_quantized(hub, tiny_dir, tokenizer):
    HfApi().create_repo("org/tiny-fp32", token=TOKEN)
    HfApi().upload_folder(repo_id="org/tiny-fp32", folder_path=tiny_dir("text-classification"), token=TOKEN)

    assert download_quantized_model("org/tiny-fp32") is None  # no recipe: nothing downloaded
    assert not [r for r in hub.requests if r.endpoint == "resolve" and r.path.endswith(".safetensors")]
    model = QuantModelForSequenceClassification.from_pretrained("org/tiny-fp32", export=True, quantize="dynamic")
    assert model.quantization_recipe.source_model == "org/tiny-fp32"
    assert model.quantization_recipe.details["int8_ops"]
    reference = transformers.AutoModelForSequenceClassification.from_pretrained(tiny_dir("text-classification"))
    assert np.argmax(logits(model, tokenizer), -1).tolist() == np.argmax(logits(reference.eval(), tokenizer), -1).tolist()


# ------------------------------------------------------------------------------------------------ model card

METRICS = {"accuracy": {"fp32": 0.912, "int8": 0.905}, "speedup": 1.8, "size_ratio": 0.31}


def test_card_metadata_holds_recipe_and_metrics_and_its_snippet_runs(hub, ort_model, tmp_path):
    ort_model.save_pretrained(tmp_path / "saved")
    model = QuantModelForSequenceClassification.from_pretrained(tmp_path / "saved")
    model.quantization_recipe = dataclasses.replace(
        model.quantization_recipe, source_model="org/bert-tiny-fp32", metrics=METRICS
    )
    model.push_to_hub("org/carded", token=TOKEN)
    files = hub.files("org/carded")
    (tmp_path / "README.md").write_bytes(files["README.md"])

    metadata = metadata_load(tmp_path / "README.md")
    assert metadata["base_model"] == "org/bert-tiny-fp32"
    assert metadata["library_name"] == "optimum-quantization"
    assert metadata["pipeline_tag"] == "text-classification"
    assert {"quantized", "int8", "onnxruntime", "dynamic-quantization"} <= set(metadata["tags"])
    recipe = json.loads(files["quantization_config.json"])
    assert metadata["quantization_config"] == recipe
    assert recipe["metrics"] == METRICS and recipe["quantization"]["_type"] == "DynamicQuantConfig"

    text = ModelCard(files["README.md"].decode()).text
    assert "| accuracy.int8 | 0.905 |" in text and "| speedup | 1.8 |" in text
    assert model.quantization_recipe.hardware["model"] in text
    assert "| per_channel | True |" in text
    snippet = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert 'QuantModelForSequenceClassification.from_pretrained("org/carded")' in snippet.replace("'", '"')
    scope: dict = {}
    exec(snippet, scope)  # the usage snippet really loads the published model through this package
    assert scope["pipe"]("a good script")[0]["label"] in model.config.id2label.values()


def test_card_without_measurements_says_so_and_omits_a_local_base_model(tmp_path):
    recipe = QuantizationRecipe(backend="torch", task="question-answering", quantization=None, source_model=str(tmp_path))
    card = build_model_card(recipe, "org/qa", revision="v2", subfolder="fp32")
    assert card.data.base_model is None  # a local path is not a valid base_model
    assert "quantized" not in card.data.tags and "int8" not in card.data.tags
    assert "No measurement was recorded" in card.text
    assert "QuantModelForQuestionAnswering.from_pretrained('org/qa', subfolder='fp32', revision='v2')" in card.text


def test_card_of_a_static_request_kept_in_fp32_says_fp32_and_why():
    """OpenVINO's precision="auto" stores the FP32 IR when it measured fastest: the card must not claim INT8."""
    from optimum.quantization import StaticQuantConfig

    reason = "measured fastest here (fp32 90.31 ms, int8-weights 101.71 ms, int8 134.28 ms)"
    recipe = QuantizationRecipe(backend="openvino", task="question-answering", quantization=StaticQuantConfig(),
                                details={"precision": {"requested": "auto", "chosen": "fp32", "reason": reason}})
    card = build_model_card(recipe, "org/qa")
    assert "quantized" not in card.data.tags and "int8" not in card.data.tags
    assert "An FP32 question-answering export" in card.text and reason in card.text
    int8 = dataclasses.replace(recipe, details={"precision": {"requested": "auto", "chosen": "int8", "reason": reason}})
    assert "int8" in build_model_card(int8, "org/qa").data.tags


def test_card_shows_what_precision_auto_measured_and_stored():
    """A measured choice is on the card: the form stored and why; INT8 weights are not called static INT8."""
    from optimum.quantization import StaticQuantConfig

    reason = "measured fastest here (int8-weights 33.86 ms, fp32 34.48 ms, int8 42.79 ms)"
    stored = {"requested": "auto", "chosen": "int8-weights", "reason": reason}
    recipe = QuantizationRecipe(backend="openvino", task="question-answering", quantization=StaticQuantConfig(),
                                details={"precision": stored})
    card = build_model_card(recipe, "org/qa")
    assert f'`precision="auto"` timed static INT8, INT8 weights and FP32 on the quantizing CPU and stored ' \
           f'**int8-weights**: {reason}.' in card.text
    assert "weightonly-quantization" in card.data.tags and "static-quantization" not in card.data.tags
    assert "INT8 (weightonly)" in card.text
    # A plain static request (precision "int8", the default) stores static INT8 and says nothing about measuring.
    static = dataclasses.replace(
        recipe, details={"precision": {"requested": "int8", "chosen": "int8", "reason": "requested"}})
    card = build_model_card(static, "org/qa")
    assert "static-quantization" in card.data.tags and "precision=" not in card.text.split("<details>")[0]


def test_subfolders_are_published_and_a_user_written_readme_is_kept_with_our_metadata(hub, ort_model, tmp_path):
    folder = tmp_path / "saved"
    ort_model.save_pretrained(folder)
    (folder / "README.md").write_text("---\nlicense: mit\ntags: [sentiment]\n---\n# My notes\nHand-written.\n")
    (folder / "eval" / "sst2").mkdir(parents=True)
    (folder / "eval" / "sst2" / "results.json").write_text('{"accuracy": 0.9}')
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    push_folder_to_hub(folder, "org/user-card", token=TOKEN)

    files = hub.files("org/user-card")
    assert files["eval/sst2/results.json"] == b'{"accuracy": 0.9}' and ".git/HEAD" not in files
    assert len(hub.called("commit")) == 1
    card = ModelCard(files["README.md"].decode())
    assert "# My notes\nHand-written." in card.text
    assert card.data.license == "mit" and card.data.library_name == "optimum-quantization"
    assert card.data.tags[0] == "sentiment" and "int8" in card.data.tags
    assert card.data.quantization_config == json.loads((folder / "quantization_config.json").read_text())
    assert (folder / "README.md").read_text().startswith("---\nlicense: mit")  # the local folder is left as it was


def test_card_loading_class_matches_modeling():
    assert LOADING_CLASSES == {task: cls.__name__ for task, cls in QUANT_MODEL_CLASSES.items()}


# ------------------------------------------------------------------------------------------------ failures


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"  # closed when the with-block ends: connection refused


@pytest.mark.parametrize(
    "case, error, message",
    [
        ("no token", HubAuthenticationError, "needs a Hugging Face token"),
        ("wrong token (401)", HubAuthenticationError, r"rejected the token \(401 Unauthorized\)"),
        ("server error during commit (500)", HubError, "HTTP 500 while pushing to org/failing.*No file was published"),
        ("repository gone (404)", ModelNotFoundError, "Repository org/failing was not found"),
        ("connection refused", HubError, "Could not reach the Hub at http://127.0.0.1:.*ConnectionError"),
        ("server quotes the token in its error (500)", HubError, "HTTP 500 .*you sent: Bearer <token>"),
        ("offline mode", HubError, "HF_HUB_OFFLINE is set"),
        ("no write access (403)", HubAuthenticationError, r"403 Forbidden.*write access"),
    ],
)
def test_failed_push_publishes_nothing_and_shows_no_token(hub, ort_model, monkeypatch, capsys, caplog, case, error, message):
    _log_everything(caplog)
    token = {"no token": None, "wrong token (401)": WRONG_TOKEN}.get(case, TOKEN)
    if case == "server error during commit (500)":
        hub.fail["commit"] = 500
    elif case == "repository gone (404)":
        hub.fail["preupload"] = (404, "RepoNotFound")
    elif case == "connection refused":
        _point_huggingface_hub_at(monkeypatch, _closed_port_url())
    elif case == "server quotes the token in its error (500)":
        hub.fail["preupload"], hub.echo_authorization = 500, True
    elif case == "no write access (403)":
        hub.fail["create"] = 403  # huggingface_hub then checks the repo exists (404) and re-raises the 403
    elif case == "offline mode":
        _point_huggingface_hub_at(monkeypatch, hub.url, offline=True)

    with pytest.raises(error, match=message) as raised:
        ort_model.push_to_hub("org/failing", token=token)

    assert hub.files("org/failing") in ({}, INITIAL_FILES)  # no repo, or the empty one create_repo made
    if case in ("no token", "offline mode"):
        assert hub.requests == []  # refused before any request reached the server
    if case == "server error during commit (500)":
        assert len(hub.called("commit")) == 1  # it did reach the commit, which failed whole
    _assert_no_token_shown(capsys, caplog, str(raised.value), repr(raised.value))


def test_pushing_a_folder_that_is_not_a_quantized_model_is_refused(hub, tiny_dir):
    with pytest.raises(ConfigError, match="holds no quantization_config.json, so it is not a model quantized"):
        push_folder_to_hub(tiny_dir("text-classification"), "org/fp32", token=TOKEN)
    assert hub.requests == []


def test_loading_a_missing_repo_says_so(hub):
    with pytest.raises(ModelNotFoundError, match="Repository org/missing was not found"):
        QuantModelForSequenceClassification.from_pretrained("org/missing")


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_push_publishes_a_saved_folder(hub, ort_model, tmp_path, monkeypatch, capsys):
    ort_model.save_pretrained(tmp_path / "saved")
    monkeypatch.setenv("HF_TOKEN", TOKEN)  # read at call time by huggingface_hub.get_token
    assert main(["push", str(tmp_path / "saved"), "org/from-cli", "--revision", "dev"]) == 0
    assert "Published" in capsys.readouterr().out
    assert "model.onnx" in hub.files("org/from-cli", "dev") and "README.md" in hub.files("org/from-cli", "dev")


def test_cli_push_refuses_a_folder_that_is_not_quantized(hub, tiny_dir, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert main(["push", str(tiny_dir("text-classification")), "org/from-cli"]) == 2
    assert "is not a model quantized by optimum-quantization" in capsys.readouterr().err
    assert hub.requests == []


@pytest.mark.parametrize("token, code", [(TOKEN, 0), (WRONG_TOKEN, 2)], ids=["valid-token", "wrong-token"])
def test_cli_push_in_a_fresh_process_follows_hf_endpoint(hub, ort_model, tmp_path, token, code):
    ort_model.save_pretrained(tmp_path / "saved")
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_TOKEN": token, "HF_HOME": str(tmp_path / "home")}
    result = subprocess.run(
        [sys.executable, "-m", "optimum.quantization.commands.cli", "push", str(tmp_path / "saved"), "org/subprocess"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == code, result.stderr
    assert token not in result.stdout + result.stderr
    if code == 0:
        assert "model.onnx" in hub.files("org/subprocess")
    else:
        assert "rejected the token (401 Unauthorized)" in result.stderr and hub.files("org/subprocess") == {}
