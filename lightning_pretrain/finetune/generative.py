"""`GenerativeFineTune`: what the text-generating fine-tuning tasks share (`Seq2SeqFineTune`, `CausalSFT`).

The model (an HF config trained from scratch, or a pretrained directory / hub id) sized to the data's tokenizer; a
trainability policy; a per-token loss normalised over the whole accumulated batch (the batch's `window_tokens`), so
`accumulate_grad_batches` never changes it; validation/test as teacher-forced loss and perplexity plus generation
scored by `text_metrics`, with a few samples in TensorBoard; `predict` writes generations; the export carries the
generation settings. A subclass sets `auto_class` and `task` and implements `forward_loss` and `generate_batch`
(the other hooks have defaults); see the "Subclass interface" section below.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.loggers import TensorBoardLogger
from torchmetrics import MeanMetric
from transformers import PretrainedConfig, PreTrainedModel

from lightning_pretrain import optim
from lightning_pretrain.checkpoint_io import check_checkpoint_fits
from lightning_pretrain.data.contract import DataContract
from lightning_pretrain.errors import InputError
from lightning_pretrain.finetune.generative_model import build_generative_model, check_data_lengths, check_vocabulary
from lightning_pretrain.finetune.text_metrics import text_metrics
from lightning_pretrain.finetune.trainability import Full, Trainability
from lightning_pretrain.generation import Generation
from lightning_pretrain.objectives.pretraining import seeded_generator
from lightning_pretrain.runs import JsonlPredictions


class GenerativeFineTune(L.LightningModule):
    auto_class: ClassVar[type]  # the transformers Auto class the task trains and exports
    task: ClassVar[str]  # the `DataContract.task` the task accepts ('text_to_text', 'sft')
    default_metrics: ClassVar[tuple[str, ...]] = ("sacrebleu", "chrf")

    def __init__(
        self,
        model: PretrainedConfig | str | None = None,
        data: DataContract | None = None,
        trainability: Trainability | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        warmup_ratio: float = 0.06,
        warmup_steps: int | None = None,
        lr_schedule: optim.Schedule = "linear",
        generation: Generation | None = None,
        metrics: list[str] | None = None,
        generate_every_n_validations: int = 1,
        log_samples: int = 4,
        attn_implementation: str | None = "sdpa",
        predictions_file: str | None = None,
    ):
        """
        Args:
            model: a local directory (e.g. a run's `hf/` export) or hub id of a pretrained model to fine-tune, or an
                HF config (`class_path: transformers.T5Config` with `init_args`) to train from scratch, its
                vocabulary and special token ids taken from the data's tokenizer.
            data: what the data module publishes (tokenizer, lengths, task); the CLI passes `data.contract`.
            trainability: the fine-tuning mode (`lightning_pretrain.finetune.{Full,Frozen,TopK,GradualUnfreezing,
                LayerwiseLRDecay,LoRA}`, configs/finetune/modes/); default: full fine-tuning.
            optimizer: optimizer class and its arguments (weight decay applies to matrices only).
            warmup_ratio: share of the optimizer steps spent in linear LR warmup from 0.
            warmup_steps: warmup length in steps; overrides warmup_ratio.
            lr_schedule: decay after warmup, per step: 'linear' or 'cosine' to 0, or 'constant'.
            generation: decoding options for validation, test and predict (greedy by default).
            metrics: generation metrics among sacrebleu, chrf, rouge1, rouge2, rougeL, exact_match (logged as
                val/<name>, 0-100); default: sacrebleu and chrf.
            generate_every_n_validations: during fit, generate (and score) at every n-th validation and at the
                last one; 0: teacher-forced loss only. validate / test always generate.
            log_samples: generations per validation shown in TensorBoard (source / reference / generation).
            attn_implementation: 'sdpa' (fused kernels), 'eager', or None for the architecture's default.
            predictions_file: where `predict` writes JSON lines (default `<run dir>/predictions.jsonl`).
        """
        super().__init__()
        if data is None or data.task != self.task:
            raise InputError(
                f"{type(self).__name__} needs a '{self.task}' data module's contract (the CLI passes "
                f"--data's `contract`), got task {getattr(data, 'task', None)!r}"
            )
        if not 0.0 <= warmup_ratio < 1.0:
            raise InputError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
        if generate_every_n_validations < 0 or log_samples < 0:
            raise InputError("generate_every_n_validations and log_samples must be >= 0")
        # evaluation-time options stay out of the checkpoint's hyperparameters: LightningCLI applies those over the
        # command line when --ckpt_path FILE is given, which would silently ignore e.g. --model.generation.num_beams
        self.save_hyperparameters(
            ignore=[
                "model",
                "data",
                "optimizer",
                "trainability",
                "generation",
                "metrics",
                "log_samples",
                "predictions_file",
            ]
        )
        self.data, self.tokenizer = data, data.tokenizer
        self.trainability = trainability or Full()
        self.optimizer = optimizer
        self.warmup_ratio, self.warmup_steps, self.lr_schedule = warmup_ratio, warmup_steps, lr_schedule
        self.generation = generation or Generation()
        self.generate_every, self.log_samples = generate_every_n_validations, log_samples
        self.predictions_file = predictions_file
        names = list(metrics) if metrics is not None else list(self.default_metrics)
        self.val_metrics = text_metrics(names).clone(prefix="val/")
        self.test_metrics = text_metrics(names).clone(prefix="test/")
        # the weights the checkpoint did not provide / left unused (set by build_model; None: not known)
        self.newly_initialised: list[str] | None = None
        self.unused_weights: list[str] | None = None
        model = self.build_model(model, attn_implementation)
        self.check_model(model)
        check_vocabulary(self.tokenizer, model)
        self.check_lengths(model.config, data)
        model.train()  # from_pretrained returns eval mode (dropout off); Lightning does not switch it back
        self.model = self.trainability.prepare(model)
        self.val_nll, self.test_nll = MeanMetric(), MeanMetric()  # token-weighted: ppl = exp(mean NLL per token)
        self._validations, self._samples = 0, []

    # -- Subclass interface ---------------------------------------------------------------------------------------
    def forward_loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced `(sum of the label tokens' NLL, number of label tokens)` of a batch (labels -100 are
        ignored); the base class normalises it (training: over the accumulation window; evaluation: per token)."""
        raise NotImplementedError

    def generate_batch(self, batch: dict) -> list[str]:
        """The decoded generation of every example of a batch (with `self.generation.kwargs(self.tokenizer)`); runs
        in eval mode without gradients, in a forked RNG seeded per batch (see `_generate`)."""
        raise NotImplementedError

    def sources(self, batch: dict) -> list[str]:
        """The input text of every example (TensorBoard samples, prediction rows); default `batch["source"]`."""
        return batch["source"]

    def references(self, batch: dict) -> list[str]:
        """The reference text of every example, scored against the generations; default `batch["target"]`."""
        return batch["target"]

    def prediction_rows(self, batch: dict, generations: list[str]) -> list[dict]:
        """One JSON line per input in `predict`; default `{"id", "source", "generation"}`."""
        return [
            {"id": i, "source": s, "generation": g}
            for i, s, g in zip(batch["example_id"].tolist(), self.sources(batch), generations, strict=True)
        ]

    def check_config(self, config: PretrainedConfig, name: str) -> None:
        """Refuse (InputError) an architecture the task cannot train, before it is built or loaded."""

    def check_model(self, model: PreTrainedModel) -> None:
        """Refuse (InputError) a built / loaded model the task cannot train."""

    def adapt_config(self, config: PretrainedConfig) -> None:
        """Task facts on a fresh config (already sized to the tokenizer), e.g. an encoder-decoder's start token."""

    def check_lengths(self, config: PretrainedConfig, data: DataContract) -> None:
        """Refuse data longer than the model's positions (default: max_length and max_target_length)."""
        check_data_lengths(config, data)

    # -- the model --------------------------------------------------------------------------------------------------
    def build_model(self, spec: PretrainedConfig | str | None, attn_implementation: str | None) -> PreTrainedModel:
        """A fresh model from a config sized to the tokenizer, or a pretrained one (`generative_model`)."""
        model, self.newly_initialised, self.unused_weights = build_generative_model(self, spec, attn_implementation)
        return model

    def configure_model(self) -> None:
        pass  # built in __init__; Lightning's ModelParallelStrategy asks every module to override this hook

    def configure_callbacks(self):
        return [self.trainability, JsonlPredictions(self.predictions_file)]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        check_checkpoint_fits(self, checkpoint)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if isinstance(self.model, PreTrainedModel):  # lets lightning-pretrain-export rebuild it (not a peft wrapper)
            checkpoint["hf_config"] = {**self.model.config.to_dict(), "architectures": [type(self.model).__name__]}

    # -- training: per-token loss over the whole accumulated (and distributed) batch ----------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        nll_sum, n_tokens = self.forward_loss(batch)
        k, world = self.trainer.accumulate_grad_batches, self.trainer.world_size
        # label tokens of this window on this rank; without `window_tokens`, k batches like this one
        window = batch.get("window_tokens")
        window = (window if window is not None else n_tokens * k).to(nll_sum.device, torch.float32)
        if world > 1:
            window = self.trainer.strategy.reduce(window, reduce_op="sum")
        # Lightning divides by k and DDP averages over ranks: the step's gradient is d(sum of NLL)/d(w) / N
        loss = nll_sum * (k * world) / window.clamp_min(1)
        self.log("train/loss", nll_sum.detach() / n_tokens.clamp_min(1), prog_bar=True)
        return loss

    # -- evaluation -------------------------------------------------------------------------------------------------
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, self.val_nll, self.val_metrics)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, self.test_nll, self.test_metrics)

    def on_validation_epoch_start(self) -> None:
        self._validations += not self.trainer.sanity_checking
        self._samples = []

    def on_test_epoch_start(self) -> None:
        self._samples = []

    def generating(self) -> bool:
        """Whether this evaluation generates: always outside fit; in fit every n-th validation and the last one."""
        trainer = self.trainer
        if trainer.state.fn != "fit" or trainer.sanity_checking:
            return True  # a sanity check generates too: a broken generation path shows before hours of training
        return self.generate_every > 0 and (self._validations % self.generate_every == 0 or trainer.should_stop)

    def _evaluate(self, batch: dict, batch_idx: int, nll: MeanMetric, metrics) -> None:
        nll_sum, n_tokens = self.forward_loss(batch)
        nll.update(nll_sum / n_tokens.clamp_min(1), weight=n_tokens)
        if not self.generating():
            return
        generations, references = self._generate(batch, batch_idx), self.references(batch)
        metrics.update(generations, references)
        for source, reference, generation in zip(self.sources(batch), references, generations):
            if len(self._samples) < self.log_samples:
                self._samples.append((source, reference, generation))

    def _generate(self, batch: dict, batch_idx: int) -> list[str]:
        """`generate_batch` with sampling drawn from a stream of its own (seed, rank, batch): reproducible, and
        the training RNG is left where it was."""
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            if self.generation.do_sample:
                seed = seeded_generator(torch.device("cpu"), self.generation.seed, self.global_rank, batch_idx)
                torch.manual_seed(int(torch.randint(2**62, (), generator=seed)))
            return self.generate_batch(batch)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val", self.val_nll, self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test", self.test_nll, self.test_metrics)

    def _log_metrics(self, prefix: str, nll: MeanMetric, metrics) -> None:
        if nll.update_count == 0:
            return
        loss = nll.compute()  # computed (and synchronised across ranks) by torchmetrics: no sync_dist needed
        values = {f"{prefix}/loss": loss, f"{prefix}/ppl": torch.exp(loss)}
        if any(m.update_count for m in metrics.values()):
            values.update({k: v.float() for k, v in metrics.compute().items()})
        self.log_dict(values, prog_bar=True)
        nll.reset()
        metrics.reset()
        self._log_samples(prefix)

    def _log_samples(self, prefix: str) -> None:
        """A markdown table of rank 0's first generations as TensorBoard text (`<prefix>/samples`)."""
        if not self._samples or self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        cell = lambda text: " ".join(str(text).split()).replace("|", "\\|")  # noqa: E731
        table = "| source | reference | generation |\n|---|---|---|\n" + "".join(
            f"| {cell(s)} | {cell(r)} | {cell(g)} |\n" for s, r, g in self._samples
        )
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text(f"{prefix}/samples", table, self.global_step)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        return {"rows": self.prediction_rows(batch, self._generate(batch, batch_idx))}

    # -- optimisation -------------------------------------------------------------------------------------------
    def configure_optimizers(self):
        return optim.finetune_optimizers(self)

    # -- export -------------------------------------------------------------------------------------------------
    def export_hf(self, out_dir: str | Path, state_dict: dict | None = None) -> Path:
        """The fine-tuned model (LoRA merged), its tokenizer and a generation config holding `generation`'s
        options, so `model.generate(**inputs)` decodes as validation did."""
        out_dir = Path(out_dir)
        model = self.trainability.exportable(self.model, out_dir)
        settings = {k: v for k, v in self.generation.kwargs(self.tokenizer).items() if k != "pad_token_id"}
        model.generation_config.update(**settings)
        model.save_pretrained(out_dir, state_dict=state_dict if model is self.model else None, safe_serialization=True)
        self.tokenizer.save_pretrained(out_dir)
        return out_dir
