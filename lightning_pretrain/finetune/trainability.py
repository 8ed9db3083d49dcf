"""Fine-tuning modes as trainability policies: which parameters of a model train, when, and at what LR.

A policy is a Lightning callback owned by the task module (`--model.trainability`, composed from
`configs/finetune/modes/<mode>.yaml`): it can freeze or wrap the model once (`prepare`), lay out the optimizer's
parameter groups (`param_groups`; frozen parameters get no optimizer state), act every step
(`on_train_batch_start`), and turn the trained model into a plain HF model for export (`exportable`). Depths are
`architecture.layer_depths`. Why gradual unfreezing is not Lightning's `BackboneFinetuning`: docs/design/finetune.md.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import lightning as L
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from lightning_pretrain import compat, optim
from lightning_pretrain.architecture import depth_name, layer_depths
from lightning_pretrain.errors import InputError


def depth_groups(model: nn.Module, scale=lambda depth: 1.0, start=lambda depth: 0) -> list[dict]:
    """Optimizer parameter groups per depth (each split into decayed and undecayed parameters), carrying the
    depth's `lr_scale` and `start_step`, named for the LR monitor (`architecture.depth_name`: 'head', 'layer.5',
    'decoder.layer.1', 'embeddings')."""
    depths, _ = layer_depths(model)
    by_depth: dict[int, list] = {}
    for name, p in model.named_parameters():
        by_depth.setdefault(depths[name], []).append((name, p))
    groups = []
    for depth in sorted(by_depth):
        label = depth_name(model, depth)
        for g in optim.decay_groups(by_depth[depth], depth=depth, lr_scale=scale(depth), start_step=start(depth)):
            g["name"] = label if g.get("weight_decay") != 0.0 else f"{label}.no_decay"
            groups.append(g)
    return groups


class Trainability(L.Callback):
    """Full fine-tuning: every parameter trains at the optimizer's LR. The other modes narrow this down."""

    def prepare(self, model: nn.Module) -> nn.Module:
        """Freeze or wrap the freshly built model; returns the module to train."""
        return model

    def param_groups(self, model: nn.Module, trainer: L.Trainer) -> list[dict]:
        """Optimizer parameter groups. Optional keys: `lr_scale` (times the optimizer's LR) and `start_step`
        (LR 0 and no gradient before it)."""
        return optim.decay_groups(model.named_parameters())

    def exportable(self, model: nn.Module, out_dir: Path) -> nn.Module:
        """The plain Hugging Face model to save in `out_dir` (LoRA merges its adapters here)."""
        return model

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        trainable = sum(
            p.numel()
            for opt in trainer.optimizers
            for g in opt.param_groups
            if g.get("start_step", 0) <= step
            for p in g["params"]
        )
        total = sum(p.numel() for p in pl_module.parameters())
        rank_zero_info(
            f"{type(self).__name__}: {trainable:,} of {total:,} parameters train "
            f"({100 * trainable / max(total, 1):.2f}%) at step {step}"
        )
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics({"train/trainable_params": trainable, "train/total_params": total}, step=step)


class Full(Trainability):
    """Everything trains (the usual fine-tuning)."""


class TopK(Trainability):
    def __init__(self, k: int = 2):
        """Only the top `k` transformer blocks (with what follows them, e.g. the pooler) and the head train.

        Args:
            k: number of top blocks that train; 0 trains the head alone (a linear probe).
        """
        if k < 0:
            raise InputError(f"top_k needs k >= 0, got {k}")
        self.k = k

    def prepare(self, model: nn.Module) -> nn.Module:
        depths, n_layers = layer_depths(model)
        if self.k > n_layers:
            raise InputError(f"top_k: k={self.k} but the model has only {n_layers} blocks (use the 'full' mode)")
        for name, p in model.named_parameters():
            p.requires_grad_(depths[name] <= self.k)
        return model


class Frozen(TopK):
    def __init__(self):
        """The backbone is frozen and only the head trains (a linear probe); frozen weights get no optimizer
        state."""
        super().__init__(k=0)


class LayerwiseLRDecay(Trainability):
    def __init__(self, decay: float = 0.9):
        """Layer-wise learning-rate decay: a parameter at depth d (0 = head, 1 = top block, ..., L + 1 =
        embeddings) trains at lr x decay^d, so the layers nearest the input, the most general, move least.

        Args:
            decay: per-layer LR multiplier in (0, 1].
        """
        if not 0.0 < decay <= 1.0:
            raise InputError(f"llrd needs 0 < decay <= 1, got {decay}")
        self.decay = decay

    def param_groups(self, model: nn.Module, trainer: L.Trainer) -> list[dict]:
        return depth_groups(model, scale=lambda depth: self.decay**depth)


class GradualUnfreezing(Trainability):
    def __init__(self, every_n_steps: int | None = None, every_n_epochs: int | None = None, lr_decay: float = 1.0):
        """ULMFiT's gradual unfreezing: the head trains from the start, and one more depth group (top block first,
        the embeddings last) joins every N optimizer steps or epochs.

        Every group is in the optimizer from step 0; a group still frozen has LR 0 (in the optimizer, the LR
        monitor and the checkpoint) and no gradient (`requires_grad` off, so no backward through it and no
        optimizer state). Which groups train is a function of the global step alone, so it is right with per-step
        LR schedules, on every DDP rank (strategy `ddp_find_unused_parameters_true`) and after a resume.

        Args:
            every_n_steps: optimizer steps between two unfreezings.
            every_n_epochs: epochs between two unfreezings (converted to steps from the epoch length).
            lr_decay: optional layer-wise LR decay on top (ULMFiT's discriminative fine-tuning uses 1/2.6).
        """
        if (every_n_steps is None) == (every_n_epochs is None):
            raise InputError("gradual unfreezing needs exactly one of every_n_steps and every_n_epochs")
        if (every_n_steps or every_n_epochs) < 1:
            raise InputError("gradual unfreezing needs every_n_steps / every_n_epochs >= 1")
        if not 0.0 < lr_decay <= 1.0:
            raise InputError(f"gradual unfreezing needs 0 < lr_decay <= 1, got {lr_decay}")
        self.every_n_steps, self.every_n_epochs, self.lr_decay = every_n_steps, every_n_epochs, lr_decay

    def prepare(self, model: nn.Module) -> nn.Module:
        for p in model.parameters():  # all on until the first batch: DDP registers exactly these for reduction
            p.requires_grad_(True)
        return model

    def param_groups(self, model: nn.Module, trainer: L.Trainer) -> list[dict]:
        every = self.every_n_steps or self.every_n_epochs * steps_per_epoch(trainer)
        return depth_groups(model, scale=lambda depth: self.lr_decay**depth, start=lambda depth: depth * every)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        strategy = trainer.strategy
        if stage == "fit" and isinstance(strategy, DDPStrategy) and not compat.ddp_finds_unused_parameters(strategy):
            raise InputError(
                "gradual unfreezing under DDP needs --trainer.strategy ddp_find_unused_parameters_true "
                "(the groups still frozen get no gradient until their step)"
            )

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        step = trainer.global_step
        unfrozen = set()
        for opt in trainer.optimizers:
            for g in opt.param_groups:
                on = step >= g.get("start_step", 0)
                for p in g["params"]:
                    p.requires_grad_(on)
                if on:
                    unfrozen.add(g.get("depth"))
        pl_module.log("train/unfrozen_groups", float(len(unfrozen)), on_step=True, on_epoch=False)


class LoRA(Trainability):
    def __init__(self, r: int = 8, alpha: int = 16, dropout: float = 0.1, target_modules: list[str] | None = None):
        """Low-rank adapters (peft) on the attention projections; the backbone stays frozen, a classifier's head
        trains (a language model's output layer, mostly tied to its input embeddings, stays frozen). peft's task type
        follows the model: SEQ_CLS for a classifier, SEQ_2_SEQ_LM for an encoder-decoder that generates (T5, BART),
        CAUSAL_LM for a decoder-only LM; a question-answering span head (`qa_outputs`) trains beside the adapters.

        The export is the merged model (W + BA folded in), which loads without peft; the adapters alone (with
        the trained head) are saved next to it in `hf/adapter/` for `peft.PeftModel.from_pretrained`.

        Args:
            r: rank of the update BA.
            alpha: scaling numerator (the update is scaled by alpha / r).
            dropout: dropout on the adapter's input.
            target_modules: names of the projections to adapt; default: peft's attention projections for the
                architecture (BERT: query, value).
        """
        if r < 1:
            raise InputError(f"LoRA rank r must be >= 1, got {r}")
        self.r, self.alpha, self.dropout, self.target_modules = r, alpha, dropout, target_modules

    def prepare(self, model: nn.Module) -> nn.Module:
        from peft import LoraConfig, TaskType, get_peft_model

        # a span head trains as peft's QUESTION_ANS type would train it, but under the plain PeftModel: peft's QA
        # wrapper drops `token_type_ids` from the forward (0.21), so the trained model and its export would differ
        span = type(model).__name__.endswith("ForQuestionAnswering")
        task = (
            None
            if span
            else TaskType.SEQ_CLS
            if not model.can_generate()
            else TaskType.SEQ_2_SEQ_LM
            if getattr(model.config, "is_encoder_decoder", False)
            else TaskType.CAUSAL_LM
        )
        config = LoraConfig(
            task_type=task,
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            modules_to_save=["qa_outputs"] if span else None,
        )
        try:
            return get_peft_model(model, config)
        except ValueError as e:  # unknown architecture or target modules that do not exist
            raise InputError(f"LoRA: {str(e).splitlines()[0]}") from e

    def exportable(self, model: nn.Module, out_dir: Path) -> nn.Module:
        model.save_pretrained(Path(out_dir) / "adapter")
        # merge a copy: training (or a following validate/test) keeps the adapted model as it is
        return copy.deepcopy(model).merge_and_unload()


def steps_per_epoch(trainer: L.Trainer) -> int:
    """Optimizer steps in one training epoch (Lightning steps on a last, incomplete accumulation too)."""
    if trainer.train_dataloader is None:  # as `estimated_stepping_batches` does when max_epochs is set
        trainer.fit_loop.setup_data()
    batches = trainer.num_training_batches
    if not math.isfinite(batches):
        raise InputError("unfreezing every_n_epochs needs a training set with a length; use every_n_steps")
    return max(1, math.ceil(batches / trainer.accumulate_grad_batches))
