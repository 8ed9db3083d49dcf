"""ELECTRA's replaced-token detection: a small masked-LM generator fills the masked positions with tokens sampled
from its output distribution; the discriminator (the model kept) tells every token original or replaced.
loss = generator MLM loss + `disc_weight` x discriminator BCE (over every non-padding token). Two architectures:
ELECTRA's own (`ElectraForPreTraining` + `ElectraForMaskedLM` sharing one embeddings module) and any encoder with a
token-classification head, e.g. ModernBERT (rotary positions learn where to attend far sooner on a CPU budget:
benchmarks/RESULTS.md): its one-output `...ForTokenClassification` discriminates, its `...ForMaskedLM` generates,
narrower (own embeddings) or shallower (sharing the token embeddings). Masking is `mask_tokens`; the Gumbel-max
sample is seeded, outside autograd. Metrics: `val/loss` (disc BCE), `val/gen_loss`, `val/disc_{acc,precision,
recall,f1,auroc}` (replaced = positive). Exports `hf/` and `hf/generator/`.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import binary_precision, binary_recall
from transformers import (
    AutoConfig,
    AutoModelForPreTraining,
    AutoModelForTokenClassification,
    ElectraConfig,
    ElectraForMaskedLM,
    ElectraForPreTraining,
    PretrainedConfig,
)

from lightning_pretrain import architecture, compat, parallel
from lightning_pretrain.data.contract import IGNORE_INDEX
from lightning_pretrain.errors import InputError
from lightning_pretrain.objectives.electra_generator import build_generator
from lightning_pretrain.objectives.electra_metrics import ElectraLosses, detection_metrics, update_detection
from lightning_pretrain.objectives.masked_lm import MaskedLM
from lightning_pretrain.objectives.pretraining import seeded_generator

SAMPLE_STREAM = 1  # appended to the masking seed's key: the sample's random stream differs from the mask's


def sample_tokens(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of `logits`, distributed as `softmax(logits)` (Gumbel-max); no gradient flows back."""
    u = torch.rand(logits.shape, device=logits.device, generator=generator).clamp_(min=1e-20)
    return (logits.detach().float() - torch.log(-torch.log(u))).argmax(-1)


def replace_tokens(
    input_ids: torch.Tensor, selected: torch.Tensor, sampled: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(inputs, labels)` for the discriminator: `input_ids` with `sampled` (one per True of `selected`, in
    row-major order) at the selected positions, and labels 1 where the token now differs from the original, else 0
    (a sample that happens to equal the original is labelled original, as in ELECTRA)."""
    inputs = input_ids.masked_scatter(selected, sampled.to(input_ids.dtype))
    return inputs, (inputs != input_ids).long()


def prior_logit(p: float) -> float:
    """The log-odds `log(p / (1 - p))`: a logit whose sigmoid is `p`."""
    return math.log(p / (1 - p))


def discriminator_class(config: PretrainedConfig):
    """ELECTRA's own pretraining head, else the architecture's token classifier (one output per token)."""
    return AutoModelForPreTraining if isinstance(config, ElectraConfig) else AutoModelForTokenClassification


class ELECTRA(MaskedLM):
    document_masking = False  # its own losses take plain blocks
    auto_class = AutoModelForPreTraining

    def __init__(
        self,
        generator_size: float = 0.25,
        generator_layers: int | None = None,
        disc_weight: float = 50.0,
        export_generator: bool = True,
        mask_fraction: float = 1.0,
        random_fraction: float = 0.0,
        prior_bias: bool = True,
        **kwargs,
    ):
        """
        Args:
            generator_size: the generator's hidden width as a fraction of the discriminator's (ELECTRA: 1/4), in
                whole attention heads of the discriminator's head width; same embedding size. When `model` is a
                directory with a `generator/` sub-directory (an export of this objective), that generator is
                loaded instead.
            generator_layers: the generator's depth (default: the discriminator's). A generator as wide as the
                discriminator (`generator_size 1`) and shallower shares its token embeddings, as ELECTRA's does.
            disc_weight: weight of the discriminator's loss in the sum (ELECTRA: 50).
            export_generator: also export the generator, as `ElectraForMaskedLM`, to `<run dir>/hf/generator/`.
            mask_fraction: share of selected tokens the generator sees as [MASK] (1.0: the paper's description;
                ELECTRA's released code keeps 15% unchanged: 0.85); the rest stay, and every selected position
                gets a sampled token in the discriminator's input.
            random_fraction: share of selected tokens replaced by a random token in the generator's input (0).
            prior_bias: start a fresh discriminator's output bias at the log-odds of `mlm_probability` (about the
                share of tokens replaced), not at 0 (ELECTRA's code), so the first steps need not learn that constant.
                Without it, tiny discriminators at lr 2e-3 learned it through the encoder, squeezing its outputs
                towards one vector (once wholly: every logit equal), before learning even that special tokens are
                never replaced.
        """
        if not 0 < generator_size <= 1:
            raise InputError(f"generator_size must be in (0, 1], got {generator_size}")
        if generator_layers is not None and generator_layers < 1:
            raise InputError(f"generator_layers must be at least 1, got {generator_layers}")
        if disc_weight <= 0:
            raise InputError(f"disc_weight must be positive, got {disc_weight}")
        super().__init__(mask_fraction=mask_fraction, random_fraction=random_fraction, **kwargs)
        if not (
            isinstance(self.model, ElectraForPreTraining)
            or (type(self.model).__name__.endswith("ForTokenClassification") and self.model.config.num_labels == 1)
        ):
            raise InputError(
                f"ELECTRA trains an ElectraForPreTraining or a one-output ...ForTokenClassification "
                f"discriminator, not {type(self.model).__name__}; use --model.init_args.model.class_path "
                f"transformers.ElectraConfig (or transformers.ModernBertConfig)"
            )
        self.generator_size, self.disc_weight, self.export_generator = generator_size, disc_weight, export_generator
        self.generator = build_generator(
            self.model, self.model_dir, generator_size, self.hparams.get("attn_implementation"), generator_layers
        )
        self.prior_bias = prior_bias
        if prior_bias and not self.trained_weights:
            with torch.no_grad():
                self.output_layer().bias.fill_(prior_logit(self.mlm_probability))
        # per evaluation stage (validation, test): Lightning computes, logs and resets each at the epoch's end
        self.eval_metrics = torch.nn.ModuleDict({stage: detection_metrics(stage) for stage in ("val", "test")})

    def output_layer(self) -> torch.nn.Linear:
        """The discriminator's last layer (one logit per token)."""
        if isinstance(self.model, ElectraForPreTraining):
            return self.model.discriminator_predictions.dense_prediction
        return self.model.classifier

    @property
    def shares_embeddings(self) -> bool:
        return self.generator.get_input_embeddings() is self.model.get_input_embeddings()

    def build_model(self, spec, attn_implementation):
        # read by build_generator: a previous export's generator/ lives beside the discriminator
        self.model_dir = spec if isinstance(spec, str) else None
        config = spec if isinstance(spec, PretrainedConfig) else None
        if config is None:
            try:
                config = AutoConfig.from_pretrained(spec, trust_remote_code=False)
            except (OSError, ValueError) as e:
                raise InputError(f"could not load pretrained model '{spec}': {str(e).splitlines()[0]}") from e
        self.auto_class = discriminator_class(config)
        return super().build_model(spec, attn_implementation)

    def adapt_config(self, config: PretrainedConfig, tokenizer) -> None:
        if not isinstance(config, ElectraConfig):
            config.num_labels = 1  # the token classifier's one logit: replaced or not

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if parallel.is_sharded(self.model) and self.shares_embeddings:  # Parallelize shards before this hook
            raise InputError(
                "ELECTRA's generator and discriminator share their embeddings, which FSDP2 sharding "
                "cannot split; use a data-parallel strategy (ddp)"
            )

    # -- the losses ---------------------------------------------------------------------------------------------
    def generator_logits(
        self, inputs: torch.Tensor, selected: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """The generator's vocabulary logits at the selected positions only, `(selected, vocab)`."""
        g = self.generator
        hidden = g.base_model(input_ids=inputs, attention_mask=attention_mask).last_hidden_state
        if isinstance(g, ElectraForMaskedLM):
            return g.generator_lm_head(g.generator_predictions(hidden[selected]))
        return architecture.mlm_head(g)(hidden[selected])

    def disc_logits(self, **inputs) -> torch.Tensor:
        """One logit per token, `(batch, length)` (a token classifier's `(batch, length, 1)` squeezed)."""
        logits = self.model(**inputs).logits
        return logits.squeeze(-1) if logits.dim() == 3 else logits

    def losses(self, batch: torch.Tensor, *stream: int) -> ElectraLosses:
        inputs, mlm_labels = self.corrupt(batch, *stream)
        selected = mlm_labels != IGNORE_INDEX
        pad = self.tokenizer.pad_token_id
        real = batch != pad if pad is not None else torch.ones_like(batch, dtype=torch.bool)
        mask = None if bool(real.all()) else real.long()  # packed pretraining blocks never hold padding
        gen_logits = self.generator_logits(inputs, selected, mask)
        gen_loss = F.cross_entropy(gen_logits.float(), mlm_labels[selected])
        g = seeded_generator(batch.device, self.mask_seed, *stream, self.global_rank, SAMPLE_STREAM)
        disc_inputs, labels = replace_tokens(batch, selected, sample_tokens(gen_logits, g))
        logits = self.disc_logits(input_ids=disc_inputs, attention_mask=mask)[real].float()
        disc_loss = F.binary_cross_entropy_with_logits(logits, labels[real].float())
        return ElectraLosses(gen_loss, disc_loss, logits, labels[real], int(selected.sum()))

    def training_loss(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        out = self.losses(batch, self.current_epoch, batch_idx)
        loss = out.gen + self.disc_weight * out.disc
        self.log("train/loss", loss, prog_bar=True)
        calls = (out.logits > 0).long()
        self.log_dict(
            {
                "train/gen_loss": out.gen,
                "train/disc_loss": out.disc,
                "train/disc_acc": (calls == out.labels).float().mean(),
                "train/disc_precision": binary_precision(calls, out.labels),
                "train/disc_recall": binary_recall(calls, out.labels),
            }
        )
        return loss

    def validation_update(self, batch: torch.Tensor, batch_idx: int) -> None:
        out = self.losses(batch, -1, batch_idx)  # epoch -1: never a training batch's seed
        self.val_nll.update(out.disc, weight=len(out.labels))
        metrics = self.eval_metrics["test" if compat.trainer_of(self) is not None and self.trainer.testing else "val"]
        update_detection(metrics, out)
        # the metric objects themselves: Lightning computes them (synchronised across ranks) at the epoch's end
        for name, metric in metrics.items():
            self.log(name, metric, prog_bar=name.endswith(("gen_loss", "disc_acc", "disc_recall")))

    # -- optimisation and export --------------------------------------------------------------------------------
    def export_hf(self, out_dir: str | Path, state_dict: dict | None = None) -> Path:
        """The discriminator (`ElectraForPreTraining`, or e.g. `ModernBertForTokenClassification`) in `out_dir`:
        fine-tune it with `SequenceClassifier`; the generator (`...ForMaskedLM`) in `out_dir/generator`."""
        out = super().export_hf(out_dir, state_dict)
        if self.export_generator:
            self.generator.save_pretrained(out / "generator", safe_serialization=True)
            self.tokenizer.save_pretrained(out / "generator")
        return out

    # -- predict ------------------------------------------------------------------------------------------------
    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """One row per prompt: `{"id", "text", "tokens"}`, each token with the discriminator's probability that it
        was replaced (`{"token", "replaced"}`)."""
        tok = self.tokenizer
        ids = tok(batch["text"]).input_ids
        self.check_prompts(ids, batch)
        inputs = self.pad_prompts(ids, tok.pad_token_id if tok.pad_token_id is not None else 0)
        probs = self.disc_logits(**inputs).float().sigmoid()
        rows = []
        for r, (seq, i, text) in enumerate(zip(ids, batch["example_id"].tolist(), batch["text"])):
            rows.append(
                {
                    "id": i,
                    "text": text,
                    "tokens": [
                        {"token": t, "replaced": round(p, 6)}
                        for t, p in zip(tok.convert_ids_to_tokens(seq), probs[r, : len(seq)].tolist())
                    ],
                }
            )
        return {"rows": rows}
