"""`ZeroShot`: zero-/few-shot tasks on the live model every N optimizer steps during pretraining, logged as
`eval/<task>/<metric>` (TensorBoard curves of downstream accuracy emerging), with the tasks and scoring of
`lightning-pretrain-eval` (lm-eval for causal / seq2seq models, pseudo-log-likelihood for masked LMs).

Training is left exactly as it was: the model goes back to its per-module train/eval modes and the global
torch / numpy / python (and CUDA) RNG states are restored, so the run's losses are those of a run without it.
Under DDP every rank takes part (tested): lm-eval's data-parallel path gives each rank its share of the documents
and the same number of forward passes (which a sharded FSDP2 model also needs; untested there), rank 0 aggregates,
the scores are broadcast. No rank sits idle at a barrier while another scores, none waits on a collective alone.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from lightning_pretrain.callbacks.resume import rng_states, set_rng_states
from lightning_pretrain.errors import InputError


class ZeroShot(L.Callback):
    def __init__(
        self,
        tasks: list[str] | None = None,
        task_files: dict[str, str] | None = None,
        data_dir: str | None = None,
        every_n_steps: int = 500,
        limit: int | None = 200,
        num_fewshot: int = 0,
        batch_size: int = 16,
        at_fit_end: bool = True,
    ):
        """
        Args:
            tasks: what to evaluate (none: the callback is off): shipped gauntlet names (piqa, arc_easy, copa,
                openbook_qa, winogrande, lambada, ...) found in `data_dir` or `task_files`, paths to JSONL files
                in a gauntlet layout, or lm-eval task names (need the hub).
            task_files: a file per task name, e.g. `{piqa: data/piqa.jsonl}` (those tasks run too).
            data_dir: folder holding task files under their gauntlet names (piqa.jsonl, ...).
            every_n_steps: evaluate after every this many optimizer steps.
            limit: examples per task (the first ones of each file); null for all.
            num_fewshot: examples in context, drawn from the same file.
            batch_size: sequences per forward (masked LMs: masked copies per forward).
            at_fit_end: also evaluate once when fit ends (unless the last step was just evaluated).
        """
        if every_n_steps < 1:
            raise InputError(f"zero_shot.every_n_steps must be >= 1, got {every_n_steps}")
        if limit is not None and limit < 1:
            raise InputError(f"zero_shot.limit must be >= 1 (or null for all examples), got {limit}")
        self.tasks, self.task_files, self.data_dir = list(tasks or []), dict(task_files or {}), data_dir
        self.every_n_steps, self.limit, self.num_fewshot = every_n_steps, limit, num_fewshot
        self.batch_size, self.at_fit_end = batch_size, at_fit_end
        self._specs = None
        self._folder: tempfile.TemporaryDirectory | None = None
        self._manager = None
        self._last_step = -1

    @property
    def enabled(self) -> bool:
        return bool(self.tasks or self.task_files)

    def setup(self, trainer, pl_module, stage: str) -> None:
        if not self.enabled or stage != "fit":
            return
        from lightning_pretrain.evaluate import registry

        # task files are read and checked before training starts, so a typo fails in seconds, not after N steps
        self._specs = registry.resolve(self.tasks, self.task_files, self.data_dir)
        self._folder = tempfile.TemporaryDirectory(prefix="lp_zero_shot_")
        registry.write_task_folder(self._specs, Path(self._folder.name))

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self._folder is not None:
            self._folder.cleanup()
            self._folder, self._manager = None, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self._specs and step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self.evaluate(trainer, pl_module)

    def on_fit_end(self, trainer, pl_module) -> None:
        if self._specs and self.at_fit_end and trainer.global_step != self._last_step:
            self.evaluate(trainer, pl_module)

    def evaluate(self, trainer, pl_module) -> dict[str, float]:
        """Score the tasks on `pl_module.model` now, log and return `{eval/<task>/<metric>: value}`."""
        from lightning_pretrain.evaluate import harness, registry
        from lightning_pretrain.evaluate.models import build_lm, model_kind
        from lightning_pretrain.evaluate.ranks import distributed

        self._last_step = trainer.global_step
        model = pl_module.model
        tokenizer = getattr(pl_module, "tokenizer", None)
        if tokenizer is None:
            raise InputError(f"zero_shot needs an objective with a tokenizer; {type(pl_module).__name__} has none")
        harness.quiet_lm_eval()
        if self._manager is None:
            self._manager = registry.task_manager(self._specs, self._folder.name)
        kind = model_kind(model)
        states, modes = rng_states(), {m: m.training for m in model.modules()}
        model.eval()
        try:
            loaded = registry.load_tasks(self._manager, self._specs)
            if kind == "masked" and any(t.OUTPUT_TYPE == "generate_until" for t in loaded["tasks"].values()):
                raise InputError("zero_shot: generation tasks need a causal or seq2seq model, not a masked LM")
            lm = build_lm(model, tokenizer, kind, self.batch_size, spread=distributed())
            rows = harness.run_tasks(lm, self._specs, loaded, self.limit, self.num_fewshot, bootstrap_iters=0)
        finally:
            for module, training in modes.items():
                module.training = training
            set_rng_states(states)
        values = {f"eval/{row.task}/{m.name}": m.value for row in rows for m in row.metrics}
        for name, value in values.items():
            trainer.callback_metrics[name] = torch.tensor(value)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(values, step=trainer.global_step)
        rank_zero_info(
            f"zero-shot @ step {trainer.global_step}: "
            + ", ".join(f"{k.removeprefix('eval/')}={v:.4g}" for k, v in values.items())
        )
        return values
