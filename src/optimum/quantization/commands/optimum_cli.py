"""`optimum-cli quantize ...`: the same options as `optimum-quantize`, registered into optimum's CLI."""

import sys

from optimum.commands.base import BaseOptimumCLICommand, CommandInfo

from ..errors import QuantizationError
from .quantize import add_quantize_arguments, run_quantize


class QuantizeCommand(BaseOptimumCLICommand):
    COMMAND = CommandInfo(name="quantize", help="Quantize a transformers model to INT8 (optimum-quantization).")

    @staticmethod
    def parse_args(parser):
        add_quantize_arguments(parser)

    def run(self):
        try:
            return run_quantize(self.args)
        except QuantizationError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
