"""Tokens/s, samples/s, MFU and the share of step time spent waiting for data, in the logger (TensorBoard).

`Throughput` is Lightning's `ThroughputMonitor` told how to read our batches and how many FLOPs each one costs:
`train/device/{items,samples,flops}_per_sec`, `train/device/mfu` (GPU, or with `peak_flops`) and
`train/data_wait_fraction`, logged every `log_every_n_steps` once `window` batches were seen. FLOPs follow PaLM
(appendix B): 6 per trainable parameter and token (frozen: 4), lookups not counted, plus 12·L·H·Q·T attention;
model FLOPs, so recomputation is not counted and skipped work (MaskedLM's sparse head) still is. Encoder-decoders
count each side per its own tokens; an objective that reshapes its batch says what the model sees through
`model_input_shape(batch)`. The full convention: docs/design/throughput.md.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping

import torch
from lightning.pytorch.callbacks import ThroughputMonitor
from torch import nn

from lightning_pretrain import compat
from lightning_pretrain.architecture import attention_width
from lightning_pretrain.errors import InputError


# -- FLOPs arithmetic -------------------------------------------------------------------------------------------
def matmul_parameters(model: nn.Module, within: nn.Module | None = None) -> tuple[int, int]:
    """(trainable, frozen) parameter counts of `model` (or of its part `within`) that do a matmul per token."""
    within = within or model
    lookups = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters(recurse=False)}
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if (
        output is not None
        and getattr(output, "weight", None) is not None
        and any(m is output for m in within.modules())
    ):
        lookups.discard(id(output.weight))  # a tied embedding is also the output projection: one matmul
    trainable = frozen = 0
    for p in within.parameters():  # parameters() yields a tied parameter once; DTensor numel is global
        if id(p) not in lookups:
            if p.requires_grad:
                trainable += p.numel()
            else:
                frozen += p.numel()
    return trainable, frozen


def flops_per_token(
    trainable: int, frozen: int, layers: int, attention_width: int, context: int, training: bool = True
) -> int:
    """PaLM's 6N + 12·L·H·Q·T per token (2N + 4·L·H·Q·T forward only), frozen parameters 4N (forward 2N)."""
    if training:
        return 6 * trainable + 4 * frozen + 12 * layers * attention_width * context
    return 2 * (trainable + frozen) + 4 * layers * attention_width * context


def batch_flops(
    model: nn.Module, input_shape: tuple[int, int], target_len: int | None = None, training: bool = True
) -> int:
    """Model FLOPs of one batch of `input_shape` = (sequences, length) through an HF model."""
    config = model.config
    n, t_in = input_shape
    width = attention_width(config)
    if not getattr(config, "is_encoder_decoder", False):
        tr, fr = matmul_parameters(model)
        return n * t_in * flops_per_token(tr, fr, config.num_hidden_layers, width, t_in, training)
    encoder = model.get_encoder()
    enc_tr, enc_fr = matmul_parameters(model, within=encoder)
    all_tr, all_fr = matmul_parameters(model)
    t_out = target_len or t_in
    dec_layers = getattr(config, "num_decoder_layers", None) or config.num_hidden_layers
    enc = flops_per_token(enc_tr, enc_fr, config.num_hidden_layers, width, t_in, training)
    # decoder tokens attend to the targets so far (self) and to every input (cross)
    dec = flops_per_token(all_tr - enc_tr, all_fr - enc_fr, dec_layers, width, t_out + t_in, training)
    return n * (t_in * enc + t_out * dec)


# -- reading batches --------------------------------------------------------------------------------------------
def _input_ids(batch) -> torch.Tensor | None:
    if isinstance(batch, torch.Tensor):
        return batch  # pretraining corpora yield blocks of token ids
    if isinstance(batch, Mapping):
        return batch.get("input_ids")
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    return None


def samples_in(batch) -> int:
    ids = _input_ids(batch)
    return 1 if ids is None else ids.shape[0]


def tokens_in(batch) -> int:
    mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
    if mask is not None:
        return int(mask.sum())
    ids = _input_ids(batch)
    return 1 if ids is None else ids.numel()


def _target_len(batch) -> int | None:
    if isinstance(batch, Mapping):
        for key in ("labels", "decoder_input_ids"):
            if isinstance(batch.get(key), torch.Tensor):
                return batch[key].shape[-1]
    return None


# Lightning's table lists H200 at its sparse-matmul figure (2x dense) and misses the plain "NVIDIA H200" name;
# MFU is quoted against the dense peak (989 TFLOP/s bf16, as for the H100 SXM)
_DENSE_PEAK_OVERRIDES = {"h200": {torch.bfloat16: 989.4e12, torch.float16: 989.4e12, torch.float32: 66.9e12}}


def dense_peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """The device's dense peak FLOP/s for `dtype` (Lightning's table, H200 corrected); None on CPU or unknown GPUs."""
    from lightning.fabric.utilities.throughput import get_available_flops

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device).lower()
        for chip, table in _DENSE_PEAK_OVERRIDES.items():
            if chip in name and dtype in table:
                return table[dtype]
    return get_available_flops(device, dtype)


class Throughput(ThroughputMonitor):
    def __init__(self, window: int = 50, peak_flops: float | None = None):
        """
        Args:
            window: batches in the rolling average; rates appear once this many batches were seen.
            peak_flops: the device's peak FLOP/s for MFU. Unset: Lightning's table for the GPU and the training dtype
                (dense figures); CPUs have no entry, so no MFU is logged on CPU unless this is set.
        """
        if window < 2:  # Lightning's throughput tracker asserts it
            raise InputError(f"--throughput.window must be at least 2, got {window}")
        if peak_flops is not None and not peak_flops > 0:
            raise InputError(f"--throughput.peak_flops must be > 0, got {peak_flops}")
        super().__init__(batch_size_fn=samples_in, length_fn=tokens_in, window_size=window)
        self.window, self.peak_flops = window, peak_flops
        self._waits: deque[tuple[float, float]] = deque(maxlen=window)
        self._last_end: float | None = None
        self._step_start: float | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        dtype = compat.compute_dtype(trainer.precision_plugin)
        peak = self.peak_flops or dense_peak_flops(trainer.strategy.root_device, dtype)
        self.available_flops = peak
        for throughput in compat.monitor_throughputs(self).values():
            throughput.available_flops = peak

    # FLOPs: ThroughputMonitor reads `flops_per_batch` from the module at every batch
    def _set_flops(self, pl_module, batch, training: bool) -> None:
        model = getattr(pl_module, "model", None)
        if not hasattr(getattr(model, "config", None), "num_attention_heads"):
            return
        # an objective that reshapes its batch before the model (span corruption: raw blocks -> shorter inputs and
        # targets) says what the model sees through `model_input_shape(batch) -> ((sequences, length), targets)`
        shape_of = getattr(pl_module, "model_input_shape", None)
        if shape_of is not None:
            shape, target_len = shape_of(batch)
        else:
            ids = _input_ids(batch)
            if ids is None or ids.ndim != 2:
                return
            shape, target_len = tuple(ids.shape), _target_len(batch)
        pl_module.flops_per_batch = batch_flops(model, shape, target_len, training)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._set_flops(pl_module, batch, training=False)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._set_flops(pl_module, batch, training=False)

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._set_flops(pl_module, batch, training=False)

    # data wait: the gap between one step's end and the next step's start is spent fetching the batch and
    # moving it to the device (the monitor synchronises CUDA at each step's end, so the GPU idles in that gap)
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._last_end = time.perf_counter()  # the first batch's wait includes starting the loader (workers)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._set_flops(pl_module, batch, training=True)
        self._step_start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        end = time.perf_counter()
        if self._last_end is not None and self._step_start is not None:
            self._waits.append((self._step_start - self._last_end, end - self._last_end))
            wait, total = map(sum, zip(*self._waits))
            pl_module.log("train/data_wait_fraction", wait / total, on_step=True, on_epoch=False)
        self._last_end = end

    def on_validation_start(self, trainer, pl_module) -> None:
        super().on_validation_start(trainer, pl_module)
        self._last_end = None  # the next gap holds validation and checkpointing, not data loading
