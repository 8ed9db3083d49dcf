"""What every pretraining objective shares: the HF model (from a config or a checkpoint), its optimizer and LR
schedule, token-weighted validation loss/perplexity, and the Hugging Face export. An objective subclasses this and
adds only its corruption function and its `training_step` / `validation_step`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import ClassVar

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from torchmetrics import MeanMetric
from transformers import AutoModel, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from lightning_pretrain import optim, parallel
from lightning_pretrain.errors import InputError


def max_positions(config: PretrainedConfig) -> int | None:
    """The longest sequence the architecture can embed (None for relative-position models like T5)."""
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            # RoBERTa reserves padding_idx + 1 positions before the first real one
            return value - (config.pad_token_id + 1 if config.model_type in {"roberta", "xlm-roberta", "camembert"}
                            and config.pad_token_id is not None else 0)
    return None


class PretrainingModule(L.LightningModule):
    auto_class: ClassVar[type] = AutoModel  # the transformers Auto class an objective trains and exports

    def __init__(
        self,
        model: PretrainedConfig | str,
        tokenizer: PreTrainedTokenizerBase | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        warmup_steps: int = 100,
        lr_schedule: optim.Schedule = "cosine",
        attn_implementation: str | None = "sdpa",
    ):
        super().__init__()
        if tokenizer is None:
            raise InputError("the objective needs a tokenizer (the CLI links it from --data.tokenizer)")
        self.save_hyperparameters(ignore=["model", "tokenizer", "optimizer"])
        self.tokenizer = tokenizer
        self.optimizer = optimizer
        self.warmup_steps = warmup_steps
        self.lr_schedule = lr_schedule
        self.model: PreTrainedModel = self.build_model(model, tokenizer, attn_implementation)
        self.val_nll = MeanMetric()  # token-weighted, so val/ppl is exp(mean NLL per predicted token)

    # -- the model ----------------------------------------------------------------------------------------------
    def build_model(self, spec: PretrainedConfig | str, tokenizer, attn_implementation: str | None):
        """A fresh model sized to the tokenizer, or a pretrained one checked against it."""
        kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
        if isinstance(spec, str):
            try:
                model = self.auto_class.from_pretrained(spec, trust_remote_code=False, **kwargs)
            except (OSError, ValueError) as e:
                raise InputError(f"could not load pretrained model '{spec}': {str(e).splitlines()[0]}") from e
            model.train()  # from_pretrained returns eval mode (dropout off); Lightning does not switch it back
            n_embed = model.get_input_embeddings().num_embeddings
            if len(tokenizer) > n_embed:
                raise InputError(f"tokenizer/model vocabulary mismatch: the tokenizer has {len(tokenizer)} tokens but "
                                 f"'{spec}' embeds only {n_embed}; use the model's own tokenizer")
            return model
        config = copy.deepcopy(spec)
        config.vocab_size = len(tokenizer)
        for name in ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id"):
            value = getattr(tokenizer, name, None)
            if value is not None:
                setattr(config, name, value)
        self.adapt_config(config, tokenizer)
        return self.auto_class.from_config(config, **kwargs)

    def adapt_config(self, config: PretrainedConfig, tokenizer) -> None:
        """Hook for objective-specific config facts (e.g. T5's decoder start token)."""

    def check_seq_len(self, seq_len: int) -> None:
        limit = max_positions(self.model.config)
        if limit is not None and seq_len > limit:
            raise InputError(f"seq_len={seq_len} is larger than the model's {limit} positions; lower --data.seq_len "
                             f"or raise the config's max_position_embeddings / n_positions")

    def setup(self, stage: str) -> None:
        seq_len = getattr(self.trainer.datamodule, "seq_len", None) if self._trainer else None
        if seq_len is not None:
            self.check_seq_len(seq_len)

    def configure_model(self) -> None:
        # Lightning's ModelParallelStrategy hands the module a device mesh: shard the HF model's blocks with FSDP2
        # from outside (lightning_pretrain/parallel.py); under every other strategy the model stays as built
        if self.device_mesh is not None:
            parallel.shard_module(self)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # the HF config and class travel with every checkpoint, so a sharded one exports without the run's YAML
        config = self.model.config.to_dict()
        config["architectures"] = [type(self.model).__name__.removeprefix("FSDP")]  # FSDP2 renames the class
        checkpoint["hf_config"] = config

    # -- optimisation -------------------------------------------------------------------------------------------
    def configure_optimizers(self):
        opt = self.optimizer(optim.decay_groups(self.model.named_parameters()))
        total = self.trainer.estimated_stepping_batches
        try:
            sched = optim.scheduler_config(opt, self.lr_schedule, self.warmup_steps, total)
        except ValueError as e:
            raise InputError(str(e)) from e
        return {"optimizer": opt, "lr_scheduler": sched}

    # -- validation ---------------------------------------------------------------------------------------------
    def on_validation_epoch_end(self) -> None:
        self._log_nll("val")

    def on_test_epoch_end(self) -> None:
        self._log_nll("test")

    def _log_nll(self, prefix: str) -> None:
        if self.val_nll.update_count == 0:
            return
        nll = self.val_nll.compute()  # synchronised across ranks by torchmetrics
        self.log_dict({f"{prefix}/loss": nll, f"{prefix}/ppl": torch.exp(nll)}, prog_bar=True)
        self.val_nll.reset()

    def test_step(self, batch, batch_idx):
        return self.validation_step(batch, batch_idx)

    # -- export -------------------------------------------------------------------------------------------------
    def export_hf(self, out_dir: str | Path, state_dict: dict | None = None) -> Path:
        """Write the model and tokenizer so `transformers` loads them unchanged (`<run dir>/hf/`).

        `state_dict`: the full weights gathered from a sharded model (`parallel.full_state_dict`), else its own.
        """
        out_dir = Path(out_dir)
        self.model.save_pretrained(out_dir, state_dict=state_dict, safe_serialization=True)
        self.tokenizer.save_pretrained(out_dir)
        return out_dir
