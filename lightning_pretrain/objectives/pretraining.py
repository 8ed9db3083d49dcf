"""What every pretraining objective shares: the HF model (from a config or a checkpoint) sized to the data's
tokenizer, the optimizer and LR schedule, token-weighted validation loss/perplexity, and the Hugging Face export.
An objective subclasses this, takes only the options it adds, and implements `training_loss` and
`validation_update`; the steps below run them (through FSDP2's sharded root when the model is sharded). Its
`predict_step` turns the raw prompts of a batch into one JSON row each (`JsonlPredictions` writes them).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import ClassVar

import lightning as L
import numpy as np
import torch
from lightning.pytorch.cli import OptimizerCallable
from torchmetrics import MeanMetric
from transformers import AutoModel, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from lightning_pretrain import architecture, compat, optim, parallel
from lightning_pretrain.checkpoint_io import check_checkpoint_fits
from lightning_pretrain.data.contract import DataContract
from lightning_pretrain.document_attention import check_implementation, document_inputs, one_row
from lightning_pretrain.errors import InputError
from lightning_pretrain.generation import Generation
from lightning_pretrain.muon import mark_hidden_matrices
from lightning_pretrain.objectives.prompts import check_prompt_lengths, padded_prompts
from lightning_pretrain.runs import JsonlPredictions


def seeded_generator(device: torch.device, *key: int) -> torch.Generator:
    """A generator seeded by a tuple of integers (negative ones too) through numpy's SeedSequence: the same seed in
    every process and Python version, which `hash()` of a tuple does not promise."""
    entropy = [2 * k if k >= 0 else -2 * k - 1 for k in key]  # zig-zag: SeedSequence takes non-negative integers
    seed = int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> np.uint64(1))
    return torch.Generator(device=device).manual_seed(seed)


def model_batch(batch):
    """A batch as the objective takes it: which source each row came from (data mixtures) is for the logs."""
    if isinstance(batch, dict) and "mixture_source" in batch:
        batch = {k: v for k, v in batch.items() if k != "mixture_source"}
        return batch["input_ids"] if batch.keys() == {"input_ids"} else batch
    return batch


class PretrainingModule(L.LightningModule):
    auto_class: ClassVar[type] = AutoModel  # the transformers Auto class an objective trains and exports
    # options of `predict` only: the command line's values, never a checkpoint's (LightningCLI applies the saved
    # hyperparameters of `--ckpt_path FILE` over the command line)
    predict_options: ClassVar[tuple[str, ...]] = ("generation", "predictions_file")
    # whether `training_loss` / `validation_update` take batches of documents kept apart (`document_batch`)
    document_masking: ClassVar[bool] = False
    causal: ClassVar[bool] = False  # whether the model attends only to earlier tokens (its document mask, too)
    # the LR schedule's options, for the same reason: a stable-phase checkpoint resumed with a new
    # `trainer.max_steps` and WSD decay takes them from the command line (the run's config.yaml records them)
    schedule_options: ClassVar[tuple[str, ...]] = ("warmup_steps", "lr_schedule", "wsd")

    def __init__(
        self,
        model: PretrainedConfig | str,
        data: DataContract | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        warmup_steps: int = 100,
        lr_schedule: optim.Schedule = "cosine",
        wsd: optim.WSD | None = None,
        attn_implementation: str | None = "sdpa",
        generation: Generation | None = None,
        predictions_file: str | None = None,
    ):
        """
        Args:
            model: an HF config to build a fresh model from (`class_path: transformers.GPT2Config`, `BertConfig`,
                `T5Config`, ... with `init_args`), or a local directory / hub id of a pretrained model to continue.
            data: what the data module publishes (its tokenizer and block length); the CLI passes `data.contract`.
                The vocabulary size and special token ids come from its tokenizer.
            optimizer: optimizer class and its arguments (weight decay applies to matrices only).
            warmup_steps: optimizer steps of linear LR warmup from 0.
            lr_schedule: decay after warmup, per step: 'cosine' or 'linear' to 0, 'constant', or 'wsd'
                (warmup-stable-decay: the peak held, then a decay over the run's last steps; see `wsd`).
            wsd: shape of lr_schedule 'wsd': the run's last `decay_fraction` (or last `decay_steps` steps) decays
                ('linear', 'cosine' or '1-sqrt' `decay_shape`) to `min_lr_ratio` of the peak. To decay a stable-phase
                checkpoint, resume it (`--ckpt_path FILE`) with a new `trainer.max_steps` and `wsd.decay_steps`: the
                schedule options come from the command line, never from the checkpoint.
            attn_implementation: 'sdpa' (fused kernels), 'eager', 'flash_attention_2' where installed, or None
                for the architecture's default.
            generation: how `predict` generates (causal LM continuations, span corruption's fills): greedy by
                default, `generation.do_sample: true` samples, reproducibly from `generation.seed`.
            predictions_file: where `predict` writes JSON lines (default `<run dir>/predictions.jsonl`).
        """
        super().__init__()
        if data is None:
            raise InputError("the objective needs its data's contract (the CLI passes --data's `contract`)")
        self.save_hyperparameters(ignore=["model", "data", "optimizer", *self.predict_options, *self.schedule_options])
        self.data = data
        self.tokenizer = self.model_tokenizer(data.tokenizer)
        self.optimizer = optimizer
        self.warmup_steps = warmup_steps
        self.lr_schedule = lr_schedule
        self.wsd = wsd
        self.generation = generation or Generation()
        self.predictions_file = predictions_file
        self.model: PreTrainedModel = self.build_model(model, attn_implementation)
        self.trained_weights = isinstance(model, str)  # a pretrained model, or (on_load_checkpoint) a checkpoint's
        self.val_nll = MeanMetric()  # token-weighted, so val/ppl is exp(mean NLL per predicted token)

    # -- the model ----------------------------------------------------------------------------------------------
    def model_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
        """The tokenizer the model is sized to and exported with (span corruption adds its sentinels here)."""
        return tokenizer

    def build_model(self, spec: PretrainedConfig | str, attn_implementation: str | None) -> PreTrainedModel:
        """A fresh model sized to the tokenizer, or a pretrained one checked against the data's tokenizer."""
        kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
        if isinstance(spec, str):
            try:
                model = self.auto_class.from_pretrained(spec, trust_remote_code=False, **kwargs)
            except (OSError, ValueError) as e:
                raise InputError(f"could not load pretrained model '{spec}': {str(e).splitlines()[0]}") from e
            model.train()  # from_pretrained returns eval mode (dropout off); Lightning does not switch it back
            n_embed = model.get_input_embeddings().num_embeddings
            if len(self.data.tokenizer) > n_embed:
                raise InputError(
                    f"tokenizer/model vocabulary mismatch: the tokenizer has {len(self.data.tokenizer)} "
                    f"tokens but '{spec}' embeds only {n_embed}; use the model's own tokenizer"
                )
            if len(self.tokenizer) > n_embed:  # tokens the objective added (sentinels): make room for them
                model.resize_token_embeddings(len(self.tokenizer), mean_resizing=True)
            return model
        config = copy.deepcopy(spec)
        config.vocab_size = len(self.tokenizer)
        for name in ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id"):
            value = getattr(self.tokenizer, name, None)
            if value is not None:
                setattr(config, name, value)
            elif isinstance(getattr(config, name, None), int) and getattr(config, name) >= config.vocab_size:
                setattr(config, name, None)  # a default of the architecture's own vocabulary (ModernBERT's bos 50281)
        self.adapt_config(config, self.tokenizer)
        try:
            return self.auto_class.from_config(config, **kwargs)
        except ValueError as e:  # e.g. a decoder's config given to a masked-LM objective
            raise InputError(
                f"{type(self).__name__} cannot train a {type(config).__name__}: {str(e).splitlines()[0]}"
            ) from e

    def adapt_config(self, config: PretrainedConfig, tokenizer) -> None:
        """Hook for objective-specific config facts (e.g. T5's decoder start token)."""

    def check_seq_len(self, seq_len: int) -> None:
        architecture.check_length(self.model.config, seq_len, "seq_len")

    def setup(self, stage: str) -> None:
        if self.data.seq_len is not None:
            self.check_seq_len(self.data.seq_len)
        if not self.data.cross_document_attention:
            if not self.document_masking:
                raise InputError(
                    f"{type(self).__name__} does not keep packed documents apart: drop "
                    f"--data.cross_document_attention false (supported by CausalLM and MaskedLM)"
                )
            problem = check_implementation(compat.attn_implementation(self.model.config), self.causal)
            if problem:
                raise InputError(problem)

    def configure_model(self) -> None:
        # The model is built in __init__ and sharded from outside (`parallel.Parallelize`, before this hook);
        # Lightning's ModelParallelStrategy asks every module to override this hook.
        pass

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        check_checkpoint_fits(self, checkpoint)
        self.trained_weights = True

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # the HF config and class travel with every checkpoint, so a sharded one exports without the run's YAML
        config = self.model.config.to_dict()
        config["architectures"] = [type(self.model).__name__.removeprefix("FSDP")]  # FSDP2 renames the class
        checkpoint["hf_config"] = config

    # -- steps --------------------------------------------------------------------------------------------------
    def training_loss(self, batch, batch_idx: int) -> torch.Tensor:
        """The objective's training loss for one batch (log what it measures with `self.log`)."""
        raise NotImplementedError

    def validation_update(self, batch, batch_idx: int) -> None:
        """Update the validation metrics (at least `self.val_nll`) with one batch."""
        raise NotImplementedError

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return parallel.through_root(self.model, self.training_loss, model_batch(batch), batch_idx)

    def validation_step(self, batch, batch_idx: int) -> None:
        parallel.through_root(self.model, self.validation_update, model_batch(batch), batch_idx)

    def document_batch(self, batch) -> tuple[torch.Tensor, dict]:
        """`(ids, the model's extra keyword arguments)` of a block batch: none for plain `[B, L]` blocks; for blocks
        whose documents are kept apart, their restarting position ids and the attention mask that separates them
        (varlen kernels: the rows laid end to end as one, `document_attention.one_row`)."""
        if not isinstance(batch, dict):
            return batch, {}
        implementation = compat.attn_implementation(self.model.config)
        ids = batch["input_ids"].reshape(1, -1) if one_row(implementation) else batch["input_ids"]
        return ids, document_inputs(
            batch["position_ids"],
            implementation,
            self.causal,
            self.model.dtype,
            position_offset=architecture.position_offset(self.model.config),
        )

    def test_step(self, batch, batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def configure_callbacks(self):
        return [JsonlPredictions(self.predictions_file)]

    # -- predict ------------------------------------------------------------------------------------------------
    def on_predict_start(self) -> None:
        # Lightning only warns when `--ckpt_path last` finds no last*.ckpt, then predicts with the fresh weights
        if not self.trained_weights:
            raise InputError(
                "predict needs trained weights, and this model was just built from its config: pass "
                "--ckpt_path <run>/checkpoints/<file>.ckpt or --model.model <run>/hf (the export)"
            )

    def check_prompts(self, ids: list[list[int]], batch: dict, new_tokens: int = 0) -> None:
        """Refuse a prompt that does not fit the model's positions (with `new_tokens` generated after it)."""
        check_prompt_lengths(ids, batch, architecture.max_positions(self.model.config), new_tokens)

    def pad_prompts(self, ids: list[list[int]], pad_id: int, left: bool = False) -> dict[str, torch.Tensor]:
        """`input_ids` and `attention_mask` on the model's device, padded right (or left, for decoder-only
        generation, so that every prompt ends where generation begins)."""
        return padded_prompts(ids, pad_id, self.device, left)

    def generate(self, batch: dict, inputs: dict[str, torch.Tensor], pad_id: int) -> torch.Tensor:
        """`model.generate` with `self.generation`'s options. HF samples from the global RNG: it is forked, seeded
        from (generation.seed, the batch's first example id) and restored, so the same prompts and batch size
        give the same samples and predict leaves every other random stream as it found it."""
        seed = seeded_generator(torch.device("cpu"), self.generation.seed, int(batch["example_id"][0])).initial_seed()
        cuda = self.device.type == "cuda"
        with torch.random.fork_rng(devices=[self.device] if cuda else []):
            torch.random.default_generator.manual_seed(seed)
            if cuda:
                with torch.cuda.device(self.device):
                    torch.cuda.manual_seed(seed)
            return self.model.generate(**inputs, **{**self.generation.kwargs(), "pad_token_id": pad_id})

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

    # -- optimisation -------------------------------------------------------------------------------------------
    def configure_optimizers(self):
        total = self.trainer.estimated_stepping_batches
        try:
            # every parameter the module registers: the HF model and what an objective trains beside it (SpanBERT's
            # boundary head, ELECTRA's generator); shared tensors once, a distillation teacher never (unregistered)
            mark_hidden_matrices(self)  # which matrices MuonAdamW orthogonalises (any other optimizer ignores it)
            opt = optim.build_optimizer(self.optimizer, optim.decay_groups(self.named_parameters()))
            sched = optim.scheduler_config(opt, self.lr_schedule, self.warmup_steps, total, self.wsd)
        except ValueError as e:
            raise InputError(str(e)) from e
        return {"optimizer": opt, "lr_scheduler": sched}

    # -- export -------------------------------------------------------------------------------------------------
    def export_hf(self, out_dir: str | Path, state_dict: dict | None = None) -> Path:
        """Write the model and tokenizer so `transformers` loads them unchanged (`<run dir>/hf/`).

        `state_dict`: the full weights gathered from a sharded model (`parallel.full_state_dict`), else its own.
        """
        out_dir = Path(out_dir)
        self.model.save_pretrained(out_dir, state_dict=state_dict, safe_serialization=True)
        self.tokenizer.save_pretrained(out_dir)
        return out_dir
