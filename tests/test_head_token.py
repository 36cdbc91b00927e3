"""The last encoder layer computed for the classification head's token only (`head_token.py`, `head_token_only`)."""

from __future__ import annotations

import re
import numpy as np
import onnx
import pytest
import torch
import transformers

from optimum.quantization import DynamicQuantConfig, QuantModelForQuestionAnswering, QuantModelForSequenceClassification
from optimum.quantization.configuration import StaticQuantConfig, WeightOnlyQuantConfig, config_from_dict
from optimum.quantization.errors import ConfigError
from optimum.quantization.export import export_onnx, head_token_model
from optimum.quantization.head_token import keep_head_token_only

from conftest import SENTENCES

SMALL = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
             max_position_embeddings=64)
CLASSIFIERS = {
    "bert": lambda: transformers.BertForSequenceClassification(transformers.BertConfig(**SMALL)),
    "bert-eager": lambda: transformers.BertForSequenceClassification(
        transformers.BertConfig(**SMALL, attn_implementation="eager")),
    "bert-relative-key": lambda: transformers.BertForSequenceClassification(
        transformers.BertConfig(**SMALL, attn_implementation="eager", position_embedding_type="relative_key")),
    "roberta": lambda: transformers.RobertaForSequenceClassification(transformers.RobertaConfig(**SMALL)),
    "xlm-roberta": lambda: transformers.XLMRobertaForSequenceClassification(transformers.XLMRobertaConfig(**SMALL)),
    "camembert": lambda: transformers.CamembertForSequenceClassification(transformers.CamembertConfig(**SMALL)),
    "electra": lambda: transformers.ElectraForSequenceClassification(
        transformers.ElectraConfig(**SMALL, embedding_size=16)),
    "distilbert": lambda: transformers.DistilBertForSequenceClassification(
        transformers.DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=2, hidden_dim=64)),
    "distilbert-eager": lambda: transformers.DistilBertForSequenceClassification(transformers.DistilBertConfig(
        vocab_size=100, dim=32, n_layers=2, n_heads=2, hidden_dim=64, attn_implementation="eager")),
}
# Float rounding only: the first token's row is computed by the same modules from the same keys and values.
SAME_LOGITS = 1e-5


def padded_batch(length: int = 20):
    """Three sequences (not the test batch `keep_head_token_only` checks with), two of them padded."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, 90, (3, length), generator=generator)  # inside the tiny tokenizer's 95
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 5:] = 0
    attention_mask[2, 13:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


@pytest.mark.parametrize("kind", sorted(CLASSIFIERS))
def test_first_token_layer_keeps_logits(kind):
    torch.manual_seed(0)
    model = CLASSIFIERS[kind]().eval()
    batch = padded_batch()
    with torch.no_grad():
        before = model(**batch).logits
        details = keep_head_token_only(model)
        after = model(**batch).logits
        last_hidden = model.base_model(**batch).last_hidden_state
    last = ("distilbert.transformer.layer.1" if kind.startswith("distilbert")
            else f"{model.base_model_prefix}.encoder.layer.1.attention")
    assert details["applied"] and details["module"] == last and details["max_logit_difference"] < SAME_LOGITS
    assert torch.allclose(after, before, atol=SAME_LOGITS)
    assert last_hidden.shape[1] == 1  # the last layer computed one row, not 20


def test_head_that_reads_other_tokens_is_left_whole():
    class MeanPooler(torch.nn.Module):
        def __init__(self, pooler):
            super().__init__()
            self.dense, self.activation = pooler.dense, pooler.activation

        def forward(self, hidden_states):
            return self.activation(self.dense(hidden_states.mean(1)))

    torch.manual_seed(0)
    model = CLASSIFIERS["bert"]().eval()
    model.bert.pooler = MeanPooler(model.bert.pooler)
    batch = padded_batch()
    with torch.no_grad():
        before = model(**batch).logits
        details = keep_head_token_only(model)
        after = model(**batch).logits
    assert not details["applied"] and "reads more than the first token" in details["reason"]
    assert "forward" not in vars(model.bert.encoder.layer[-1].attention)  # its own forward is back
    assert torch.equal(after, before)


def test_a_forward_that_fails_or_nan_logits_leave_the_model_whole():
    torch.manual_seed(0)
    # output_attentions in the config: the encoder reads attentions the first-token forward does not return.
    model = transformers.BertForSequenceClassification(transformers.BertConfig(**SMALL, output_attentions=True)).eval()
    details = keep_head_token_only(model)
    assert not details["applied"] and "failed on a test batch" in details["reason"]
    assert "forward" not in vars(model.bert.encoder.layer[-1].attention)
    model = CLASSIFIERS["bert"]().eval()
    with torch.no_grad():
        model.classifier.weight.fill_(float("nan"))
    details = keep_head_token_only(model)  # NaN logits cannot show that nothing changed
    assert not details["applied"] and "logits changed" in details["reason"]
    assert "forward" not in vars(model.bert.encoder.layer[-1].attention)


def test_explicit_request_raises_where_the_check_fails(tiny_dir, tmp_path):
    import shutil

    folder = tmp_path / "attentions"
    shutil.copytree(tiny_dir("text-classification"), folder)
    config = transformers.AutoConfig.from_pretrained(folder)
    config.output_attentions = True
    config.save_pretrained(folder)
    with pytest.raises(ConfigError, match="head_token_only=True: the first-token forward failed"):
        head_token_model(str(folder), "text-classification", "bert", True, {})
    model, details = head_token_model(str(folder), "text-classification", "bert", "auto", {})
    assert not details["applied"] and "forward" not in vars(model.bert.encoder.layer[-1].attention)


def test_unregistered_architecture_is_reported_not_changed():
    model = transformers.GPT2ForSequenceClassification(
        transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, pad_token_id=0)).eval()
    details = keep_head_token_only(model)
    assert details == {"applied": False, "reason": "no first-token layer registered for model type 'gpt2'"}


@pytest.mark.parametrize("config_class", [DynamicQuantConfig, StaticQuantConfig, WeightOnlyQuantConfig])
def test_setting_round_trips_and_bad_values_raise(config_class):
    for value in (True, False, "auto"):
        config = config_class(head_token_only=value)
        assert config_from_dict(config.to_dict()).head_token_only == value
    for bad in (1, "yes", None):
        with pytest.raises(ConfigError, match="head_token_only"):
            config_class(head_token_only=bad)


def _matmul_rows(onnx_path, node_name: str, feed: dict) -> int:
    """The token dimension of one MatMul's output when the graph runs on `feed`."""
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    node = next(n for n in model.graph.node if n.name == node_name)
    model.graph.output.append(onnx.helper.make_empty_tensor_value_info(node.output[0]))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = session.run([node.output[0], "logits"], feed)
    return outputs[0].shape[1], outputs[1]


def test_exported_graph_computes_one_row_in_the_last_layer(tiny_dir, tmp_path):
    folder = tiny_dir("text-classification")
    feed = {name: value.numpy() for name, value in padded_batch().items()}
    feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
    full = export_onnx(str(folder), tmp_path / "full", "text-classification", model_type="bert")
    source, details = head_token_model(str(folder), "text-classification", "bert", "auto", {})
    assert details["applied"]
    cut = export_onnx(str(folder), tmp_path / "cut", "text-classification", model_type="bert", model=source)
    ffn = "/bert/encoder/layer.1/intermediate/dense/MatMul"
    full_rows, full_logits = _matmul_rows(full, ffn, feed)
    cut_rows, cut_logits = _matmul_rows(cut, ffn, feed)
    assert (full_rows, cut_rows) == (20, 1)
    np.testing.assert_allclose(cut_logits, full_logits, atol=SAME_LOGITS)
    assert (tmp_path / "cut" / "tokenizer.json").is_file()  # the preprocessors main_export saves are saved too


@pytest.mark.parametrize("quantize", ["dynamic", "static"])
def test_onnxruntime_default_cuts_text_classifiers_and_records_it(tiny_dir, quantize):
    folder = tiny_dir("text-classification")
    model = QuantModelForSequenceClassification.from_pretrained(
        folder, quantize=quantize, calibration_dataset=SENTENCES)
    details = model.quantization_recipe.details["head_token_only"]
    assert details["applied"] and details["module"] == "bert.encoder.layer.1.attention"
    whole = QuantModelForSequenceClassification.from_pretrained(
        folder, quantize=model.quantization_config.replace(head_token_only=False), calibration_dataset=SENTENCES)
    assert "head_token_only" not in whole.quantization_recipe.details
    fp32 = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    inputs = tokenizer(SENTENCES, return_tensors="pt", padding=True)
    with torch.no_grad():
        reference = fp32(**inputs).logits.numpy()
    cut_error = np.abs(model(**inputs).logits.numpy() - reference).max()
    whole_error = np.abs(whole(**inputs).logits.numpy() - reference).max()
    # INT8 error of the tiny random model (about 0.15 either way): the cut adds no error of its own.
    assert cut_error < 2 * whole_error + 0.05


def test_explicit_request_that_cannot_apply_raises(tiny_dir):
    with pytest.raises(ConfigError, match="reads every token"):
        QuantModelForQuestionAnswering.from_pretrained(
            tiny_dir("question-answering"), quantize=DynamicQuantConfig(head_token_only=True))
    with pytest.raises(ConfigError, match="torch backend"):
        QuantModelForSequenceClassification.from_pretrained(
            tiny_dir("text-classification"), backend="torch", quantize=DynamicQuantConfig(head_token_only=True))


def test_other_tasks_and_fp32_exports_keep_every_token(tiny_dir):
    qa = QuantModelForQuestionAnswering.from_pretrained(tiny_dir("question-answering"), quantize="dynamic")
    assert "head_token_only" not in qa.quantization_recipe.details
    folder = tiny_dir("text-classification")
    fp32 = QuantModelForSequenceClassification.from_pretrained(folder, quantize=None)
    assert "head_token_only" not in fp32.quantization_recipe.details
    feed = {name: value.numpy() for name, value in padded_batch().items()}
    feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
    rows, _ = _matmul_rows(fp32.model_path, "/bert/encoder/layer.1/intermediate/dense/MatMul", feed)
    assert rows == 20


@pytest.mark.parametrize("quantize", ["dynamic", "static"])
def test_cut_layer_gemms_are_all_still_smoothed(tiny_dir, quantize):
    """In the cut layer K and V read the LayerNorm output, as before (two MatMuls: ORT cannot fuse them into
    Attention with one query row), and Q reads a Slice of it, the first token's row: all three are smoothed, Q with
    a scale of its own measured on that row, and the FFN input too."""
    model = QuantModelForSequenceClassification.from_pretrained(
        tiny_dir("text-classification"), quantize=quantize, calibration_dataset=SENTENCES)
    smoothed = model.quantization_recipe.details["smoothing"]["smoothed_nodes"]
    last = sorted(name.rsplit("/", 2)[-2] for name in smoothed if "layer.1/" in name)
    assert last == ["dense", "key", "query", "value"]  # intermediate/dense is the FFN input
    graph = onnx.load(str(model.model_path)).graph
    query = next(n for n in graph.node if n.name == "/bert/encoder/layer.1/attention/self/query/MatMul_smoothing")
    producer = next(n for n in graph.node if query.input[0] in n.output)
    assert producer.op_type == "Slice"  # the query's Mul scales the first token's row


def test_openvino_ir_computes_one_row_in_the_last_layer(tiny_dir):
    pytest.importorskip("openvino", reason="the OpenVINO backend is not installed in this environment")
    model = QuantModelForSequenceClassification.from_pretrained(
        tiny_dir("text-classification"), backend="openvino", quantize="static", calibration_dataset=SENTENCES,
        precision="int8")
    assert model.quantization_recipe.details["head_token_only"]["module"] == "bert.encoder.layer.1.attention"
    names = {op: re.search(r"encoder\.layer\.1\.([\w.]+)/", op.get_friendly_name())
             for op in model.model.get_ordered_ops() if op.get_type_name() == "MatMul"}
    rows = {name.group(1): op.get_output_partial_shape(0)[1] for op, name in names.items() if name}
    # Keys and values over every token (a dynamic length); everything else over at most the first token's row.
    assert rows["attention.self.key"].is_dynamic and rows["attention.self.key"].get_max_length() == -1
    for name in ("attention.self.query", "attention.output.dense", "intermediate.dense", "output.dense"):
        assert rows[name].get_max_length() == 1, (name, rows[name])
