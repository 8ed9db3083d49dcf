"""Knowledge distillation (DistilBERT's triple loss): a student learns from a frozen teacher.

loss = alpha·KL(teacher ‖ student, softened at temperature T)·T² + beta·the student's own MLM (`Distillation`) or
CLM (`CausalDistillation`) loss + gamma·(1 − cos) between their last hidden states (`distillation_loss`). The
teacher (a run's export or any local HF directory with its tokenizer) runs under no_grad in eval mode and follows the
module's device and dtype, but is no registered submodule: it is in no optimizer, checkpoint or export. Under DDP each
rank holds a whole copy; under FSDP2 only the student is sharded (the teacher stays whole on every rank). A teacher
without trained LM-head weights (a sentence encoder such as all-MiniLM-L6-v2) has no soft targets: alpha must be 0.
The student is built from its HF config, optionally from every other teacher layer (`init_from_layers`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, PreTrainedModel

from lightning_pretrain import architecture
from lightning_pretrain.data.contract import IGNORE_INDEX
from lightning_pretrain.errors import InputError
from lightning_pretrain.objectives.causal_lm import CausalLM
from lightning_pretrain.objectives.masked_lm import MaskedLM

SPECIALS = (
    "mask_token_id",
    "pad_token_id",
    "cls_token_id",
    "sep_token_id",
    "bos_token_id",
    "eos_token_id",
    "unk_token_id",
)


def distillation_loss(
    student_logits: torch.Tensor | None,
    teacher_logits: torch.Tensor | None,
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    hard_loss: torch.Tensor,
    alpha: float,
    beta: float,
    gamma: float,
    temperature: float,
) -> dict[str, torch.Tensor]:
    """`{"loss", "hard", "kl", "cos"}` (the last two only when their weight is non-zero).

    Logits are (rows, vocab) at the distilled positions: KL(softmax(t/T) ‖ softmax(s/T)) summed over the vocabulary
    and averaged over rows, times T² (so its gradients keep their scale as T changes, as in Hinton et al.). Hidden
    states are (..., width): 1 − cosine similarity, averaged over positions.
    """
    parts = {"hard": hard_loss}
    loss = beta * hard_loss
    if alpha:
        t = temperature
        log_s = F.log_softmax(student_logits.float() / t, -1)
        log_t = F.log_softmax(teacher_logits.float() / t, -1)
        parts["kl"] = F.kl_div(log_s, log_t, reduction="batchmean", log_target=True) * t * t
        loss = loss + alpha * parts["kl"]
    if gamma:
        width = student_hidden.shape[-1]
        cos = F.cosine_similarity(
            student_hidden.float().reshape(-1, width), teacher_hidden.float().reshape(-1, width), -1
        )
        parts["cos"] = (1 - cos).mean()
        loss = loss + gamma * parts["cos"]
    return {"loss": loss, **parts}


def every_other_layer(n_teacher: int) -> list[int]:
    """DistilBERT's choice, one teacher layer in two, counted down from the top one (6 layers -> [1, 3, 5])."""
    return list(range(n_teacher - 1, -1, -2))[::-1]


def init_from_layers(student: PreTrainedModel, teacher: PreTrainedModel, layers: list[int]) -> None:
    """Copy the teacher into the student: block i of the student from teacher block `layers[i]`, every other weight
    (embeddings, final norms, head) by name. Any weight without a same-shaped teacher counterpart is an InputError."""
    s_blocks, t_blocks = architecture.transformer_blocks(student), architecture.transformer_blocks(teacher)
    if len(layers) != len(s_blocks) or not all(0 <= i < len(t_blocks) for i in layers):
        raise InputError(
            f"init_from_teacher: the student has {len(s_blocks)} layers and the teacher {len(t_blocks)}; "
            f"give one teacher layer index (0..{len(t_blocks) - 1}) per student layer, got {layers}"
        )
    s_names = {id(m): n + "." for n, m in student.named_modules()}
    t_names = {id(m): n + "." for n, m in teacher.named_modules()}
    renames = [(s_names[id(s)], t_names[id(t_blocks[i])]) for s, i in zip(s_blocks, layers)]
    t_state, new = teacher.state_dict(), {}
    for key, value in student.state_dict().items():
        src = next((t + key[len(s) :] for s, t in renames if key.startswith(s)), key)
        if src not in t_state or t_state[src].shape != value.shape:
            have = tuple(t_state[src].shape) if src in t_state else "nothing"
            raise InputError(
                f"init_from_teacher: the student's {key} {tuple(value.shape)} has no teacher counterpart "
                f"of that shape ({src}: {have}); give the student the teacher's sizes and architecture, "
                f"or set init_from_teacher false"
            )
        new[key] = t_state[src]
    student.load_state_dict(new)


def outputs(
    model: PreTrainedModel, head: torch.nn.Module | None, inputs: torch.Tensor, rows: torch.Tensor, logits: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`(last hidden states, logits at the positions `rows` selects)`: the head runs on those rows only when the
    architecture's head is known, else the whole HF model runs."""
    if head is None:
        out = model(input_ids=inputs, output_hidden_states=True)
        return out.hidden_states[-1], out.logits[rows] if logits else None
    hidden = model.base_model(input_ids=inputs).last_hidden_state
    return hidden, head(hidden[rows]) if logits else None


class _Distil:
    """What both distillations share: the teacher, its checks, the student's init, the triple loss."""

    document_masking = False  # its own losses take plain blocks

    def __init__(
        self,
        teacher: str,
        alpha: float = 5.0,
        beta: float = 2.0,
        gamma: float = 1.0,
        temperature: float = 2.0,
        init_from_teacher: bool | list[int] = False,
        **kwargs,
    ):
        """
        Args:
            teacher: local directory (or hub id) of the frozen teacher: a run's `hf/` export, or any HF masked /
                causal LM with its tokenizer files, loaded with the objective's Auto class. It must use the data's
                tokenizer.
            alpha: weight of the KL divergence to the teacher's soft targets (DistilBERT: 5.0). Needs a teacher
                whose LM-head weights were loaded; 0 for a sentence encoder such as all-MiniLM-L6-v2.
            beta: weight of the student's own hard-label loss, MLM or CLM (DistilBERT: 2.0).
            gamma: weight of the cosine loss between the last hidden states (DistilBERT: 1.0); needs equal widths.
            temperature: softmax temperature T of the soft targets; the KL term is scaled by T².
            init_from_teacher: true: initialise the student (`model`: an HF config of the teacher's sizes) from
                every other teacher layer, counted down from the top (DistilBERT); a list: those teacher layers, one
                per student layer; false: the student starts from its config's random init.
        """
        if min(alpha, beta, gamma) < 0 or alpha + beta + gamma <= 0 or temperature <= 0:
            raise InputError("need alpha, beta, gamma >= 0, not all 0, and temperature > 0")
        super().__init__(**kwargs)
        self.alpha, self.beta, self.gamma, self.temperature = alpha, beta, gamma, temperature
        teacher_model = self.load_teacher(teacher)
        # not `self.teacher = ...`: nn.Module would register it, and with it its weights in the optimizer, the
        # checkpoint and the export; `_apply` below still moves and casts it with the module
        object.__setattr__(self, "teacher", teacher_model)
        if gamma and teacher_model.config.hidden_size != self.model.config.hidden_size:
            raise InputError(
                f"the cosine loss (gamma) needs equal hidden sizes: student "
                f"{self.model.config.hidden_size}, teacher {teacher_model.config.hidden_size}; set gamma "
                f"0 or match the sizes"
            )
        if init_from_teacher is not False:
            if self.trained_weights:
                raise InputError(
                    "init_from_teacher builds the student from the teacher: give `model` an HF config "
                    "(its layer count and the teacher's sizes), not a pretrained directory"
                )
            layers = (
                every_other_layer(len(architecture.transformer_blocks(teacher_model)))
                if init_from_teacher is True
                else list(init_from_teacher)
            )
            init_from_layers(self.model, teacher_model, layers)

    def load_teacher(self, path: str) -> PreTrainedModel:
        try:
            teacher, info = self.auto_class.from_pretrained(path, output_loading_info=True, trust_remote_code=False)
        except (OSError, ValueError) as e:
            raise InputError(f"could not load the teacher '{path}': {str(e).splitlines()[0]}") from e
        missing = sorted(info["missing_keys"])
        backbone = [k for k in missing if k.startswith(teacher.base_model_prefix + ".")]
        if backbone:
            raise InputError(
                f"the teacher '{path}' lacks weights for {backbone[:3]}: it is not a trained "
                f"{self.auto_class.__name__.removeprefix('AutoModelFor')} model"
            )
        self.teacher_head_trained = not missing
        if self.alpha and not self.teacher_head_trained:
            raise InputError(
                f"the teacher '{path}' has no trained LM head (missing {missing[:2]}...): its soft "
                f"targets would be random. Set --model.init_args.alpha 0 to distil its hidden states "
                f"(gamma) beside the student's own loss (beta)"
            )
        try:
            tok = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError, TypeError) as e:
            raise InputError(
                f"the teacher '{path}' has no loadable tokenizer, needed to check that it shares the "
                f"data's: {str(e).splitlines()[0]}"
            ) from e
        ours = self.tokenizer
        differ = [n for n in SPECIALS if getattr(tok, n, None) != getattr(ours, n, None)]
        if tok.get_vocab() != ours.get_vocab() or differ:
            raise InputError(
                f"the teacher '{path}' and the data use different tokenizers ({len(tok)} vs {len(ours)} "
                f"tokens{', special ids ' + ', '.join(differ) if differ else ''}): their outputs compare "
                f"token by token, so pass --data.tokenizer {path}"
            )
        if teacher.get_input_embeddings().num_embeddings < len(ours):
            raise InputError(f"the teacher '{path}' embeds fewer tokens than its tokenizer holds")
        return teacher.eval().requires_grad_(False)

    def _apply(self, fn, recurse: bool = True):
        # `.to(device)`, `.to(dtype)` (true-precision plugins) and `.cuda()` reach the unregistered teacher too
        super()._apply(fn, recurse)
        if "teacher" in self.__dict__:
            self.__dict__["teacher"]._apply(fn, recurse)
        return self

    def distil(self, student_in: torch.Tensor, rows: torch.Tensor, student_head, teacher_head, hard) -> torch.Tensor:
        """The triple loss at `rows` of the (corrupted) inputs; `hard(student logits at rows)` is the hard loss."""
        s_hidden, s_logits = outputs(self.model, student_head, student_in, rows)
        t_hidden = t_logits = None
        if self.alpha or self.gamma:  # beta alone (a from-scratch baseline) needs no teacher
            with torch.no_grad():
                t_hidden, t_logits = outputs(self.teacher, teacher_head, student_in, rows, logits=bool(self.alpha))
        vocab = len(self.tokenizer)  # a teacher may embed unused rows past the tokenizer (padded vocabularies)
        parts = distillation_loss(
            s_logits[:, :vocab],
            None if t_logits is None else t_logits[:, :vocab],
            s_hidden,
            t_hidden,
            hard(s_logits),
            self.alpha,
            self.beta,
            self.gamma,
            self.temperature,
        )
        self.log("train/loss", parts["loss"], prog_bar=True)
        self.log_dict({f"train/{k}_loss": v for k, v in parts.items() if k != "loss"})
        return parts["loss"]


class Distillation(_Distil, MaskedLM):
    """DistilBERT: a masked-LM student (MaskedLM's masking and options) distilled at the masked positions; the
    cosine loss covers every position. `val/loss` is the student's own MLM loss, comparable with MaskedLM runs."""

    def training_loss(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        inputs, labels = self.corrupt(batch, self.current_epoch, batch_idx)
        selected = labels != IGNORE_INDEX
        head = architecture.mlm_head(self.teacher)
        return self.distil(
            inputs, selected, self.mlm_head, head, lambda logits: F.cross_entropy(logits.float(), labels[selected])
        )


class CausalDistillation(_Distil, CausalLM):
    """A causal-LM student distilled at every next-token position from a causal teacher (GPT-2, Llama, ...).
    `val/loss` is the student's own next-token loss."""

    def training_loss(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        rows = torch.ones_like(batch, dtype=torch.bool)
        rows[:, -1] = False  # the last position predicts nothing inside the block
        targets = batch[:, 1:].reshape(-1)
        return self.distil(
            batch,
            rows,
            architecture.plain_head(self.model),
            architecture.plain_head(self.teacher),
            lambda logits: F.cross_entropy(logits.float(), targets),
        )
