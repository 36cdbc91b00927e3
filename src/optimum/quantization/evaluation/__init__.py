"""Measurement helpers: graph census now; metrics and benchmarks build on it."""
