"""The Hugging Face Hub: publish a quantized model folder with its model card, and fetch one back."""

from .card import build_model_card
from .download import download_quantized_model
from .publish import push_folder_to_hub

__all__ = ["build_model_card", "download_quantized_model", "push_folder_to_hub"]
