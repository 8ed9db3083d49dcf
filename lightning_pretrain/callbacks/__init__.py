from lightning_pretrain.callbacks.export import HFExport

__all__ = ["HFExport"]
