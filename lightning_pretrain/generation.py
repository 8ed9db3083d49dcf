"""`Generation`: how a model generates text (greedy, beam search or sampling), shared by `predict` of the pretraining
objectives and by the generative fine-tuning tasks' validation and `predict` (`--model.init_args.generation.*`)."""

from __future__ import annotations

from dataclasses import dataclass

from lightning_pretrain.errors import InputError


@dataclass
class Generation:
    """Options passed to `transformers`' `model.generate` (greedy decoding by default)."""

    max_new_tokens: int = 64  # tokens generated after the prompt / for the target
    num_beams: int = 1  # beam search when > 1
    do_sample: bool = False  # sample instead of greedy / beam search
    temperature: float = 1.0  # sampling temperature (do_sample only)
    top_k: int | None = None  # sample among the k most likely tokens (do_sample only)
    top_p: float | None = None  # nucleus sampling: the smallest set with this much probability (do_sample only)
    repetition_penalty: float = 1.0  # > 1 discourages repeating tokens (CTRL's penalty)
    seed: int = 0  # seed of the sampling stream (each batch draws from its own, so predictions are reproducible)

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise InputError(f"generation.max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.num_beams < 1:
            raise InputError(f"generation.num_beams must be at least 1, got {self.num_beams}")
        if not self.temperature > 0:  # (NaN too)
            raise InputError(f"generation.temperature must be > 0, got {self.temperature}")
        if not self.repetition_penalty > 0:
            raise InputError(f"generation.repetition_penalty must be > 0 (1: none), got {self.repetition_penalty}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise InputError(f"generation.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise InputError(f"generation.top_k must be at least 1, got {self.top_k}")

    def kwargs(self, tokenizer=None) -> dict:
        """Keyword arguments for `model.generate` (sampling options only when sampling, so no warnings)."""
        out = {
            "max_new_tokens": self.max_new_tokens,
            "num_beams": self.num_beams,
            "do_sample": self.do_sample,
            "repetition_penalty": self.repetition_penalty,
        }
        if self.do_sample:
            out["temperature"] = self.temperature
            out["top_k"] = self.top_k if self.top_k is not None else 0  # 0: no top-k filter (HF's default is 50)
            if self.top_p is not None:
                out["top_p"] = self.top_p
        if tokenizer is not None and tokenizer.pad_token_id is not None:
            out["pad_token_id"] = tokenizer.pad_token_id
        return out
