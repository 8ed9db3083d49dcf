from lightning_pretrain.callbacks.activation_checkpointing import ActivationCheckpointing
from lightning_pretrain.callbacks.compile import Compile
from lightning_pretrain.callbacks.export import HFExport
from lightning_pretrain.callbacks.resume import ResumeState
from lightning_pretrain.callbacks.throughput import Throughput

__all__ = ["ActivationCheckpointing", "Compile", "HFExport", "ResumeState", "Throughput"]
