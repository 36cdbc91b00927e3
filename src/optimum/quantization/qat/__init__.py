"""Quantization-aware training: fake-quant insertion, NNCF QAT, QATTrainer and export of the trained model."""
