"""Backends: one module each, imported lazily through optimum.quantization.registry."""
