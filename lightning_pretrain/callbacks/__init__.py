"""Callbacks every run gets from the CLI: the Hugging Face export, exact resume and throughput logging."""

from lightning_pretrain.callbacks.export import HFExport
from lightning_pretrain.callbacks.resume import ResumeState
from lightning_pretrain.callbacks.throughput import Throughput

__all__ = ["HFExport", "ResumeState", "Throughput"]
