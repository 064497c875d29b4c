"""Training side of phi3v: a native Phi-3.5-vision model for transformers 5.x, finetuning, evaluation, export."""

__version__ = "0.1.0"
