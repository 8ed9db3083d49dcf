"""lightning_pretrain: from raw text to a pretrained (and fine-tuned) Hugging Face model with PyTorch Lightning."""

__version__ = "0.1.0"
