# Picked up by `optimum-cli` (PEP 420 namespace: this folder has no __init__.py).
from optimum.quantization.commands.optimum_cli import QuantizeCommand

REGISTER_COMMANDS = [QuantizeCommand]
