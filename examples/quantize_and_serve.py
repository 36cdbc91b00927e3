"""Quantize the shipped MiniLM-L6, use it in a pipeline, save it and load it back (no network)."""

import tempfile

import numpy as np
from transformers import AutoTokenizer, pipeline

from optimum.quantization import CalibrationConfig, QuantModelForFeatureExtraction, StaticQuantConfig
from optimum.quantization.samples import default_model_dir, demo_sentences

model_dir = default_model_dir()
tokenizer = AutoTokenizer.from_pretrained(model_dir)
sentences = demo_sentences()

dynamic = QuantModelForFeatureExtraction.from_pretrained(model_dir, quantize="dynamic")
static = QuantModelForFeatureExtraction.from_pretrained(
    model_dir,
    quantize=StaticQuantConfig(calibration=CalibrationConfig(method="percentile", num_samples=32)),
    calibration_dataset=sentences[:32],
)
for name, model in [("dynamic", dynamic), ("static", static)]:
    extractor = pipeline("feature-extraction", model=model, tokenizer=tokenizer)
    embedding = np.mean(extractor(sentences[40])[0], axis=0)
    print(f"{name}: {model.quantization_recipe.details['int8_ops']} embedding[:4]={embedding[:4].round(3)}")

with tempfile.TemporaryDirectory() as out:
    dynamic.save_pretrained(out)
    reloaded = QuantModelForFeatureExtraction.from_pretrained(out)
    print("reloaded", type(reloaded).__name__, "recipe:", reloaded.quantization_config)
