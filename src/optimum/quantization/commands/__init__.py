"""Command-line interface: the `optimum-quantize` console script and `optimum-cli quantize`."""
