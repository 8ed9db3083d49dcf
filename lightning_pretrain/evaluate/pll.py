"""Pseudo-log-likelihood (Salazar et al. 2020, "Masked Language Model Scoring") for masked LMs, behind lm-eval's
`LM` interface. lm-eval's `hf` model refuses encoder-only models (lm-eval #1840), so BERT-style encoders are scored
here: each scored token is replaced by [MASK] in its own copy of the input, and log p(original token) at that
position is summed over the continuation. One forward row per distinct masked copy (copies of many requests share
a batch; identical copies, e.g. the masked answer letters of one MMLU question, run once), so PLL costs about
`len(continuation)` times a causal LM's single pass. lm-eval then computes acc / acc_norm / perplexity from these
log-likelihoods exactly as for a causal LM."""

from __future__ import annotations

import torch
import torch.distributed as dist
from lm_eval.api.model import LM
from tqdm import tqdm

from lightning_pretrain.architecture import max_positions, mlm_head
from lightning_pretrain.errors import InputError
from lightning_pretrain.evaluate.last_layer import hidden_at
from lightning_pretrain.evaluate.ranks import RankAware, distributed, sharded
from lightning_pretrain.evaluate.windows import MASKED_WINDOW, windows


class PseudoLogLikelihood:
    """Scores chosen positions of token sequences with a masked LM, one masked copy per distinct position."""

    def __init__(self, model, tokenizer, batch_size: int = 32, max_length: int | None = None, progress: bool = False):
        if tokenizer.mask_token_id is None:
            raise InputError("pseudo-log-likelihood needs a tokenizer with a mask token")
        self.model, self.tokenizer, self.batch_size, self.progress = model, tokenizer, batch_size, progress
        # the special tokens the tokenizer puts around a text ([CLS] ... [SEP], <s> ... </s>): around "[MASK]"
        marked = tokenizer(tokenizer.mask_token)["input_ids"]
        cut = marked.index(tokenizer.mask_token_id)
        self.prefix, self.suffix = marked[:cut], marked[cut + 1 :]
        limit = max_positions(model.config) or tokenizer.model_max_length
        self.max_length = min(max_length or limit, limit)
        self.budget = self.max_length - len(self.prefix) - len(self.suffix)  # tokens of text per input
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits at position `at[i]` of row i."""
        head = mlm_head(self.model)
        head = getattr(head, "predictions", head)  # BertForPreTraining's `cls` also holds the NSP head
        if head is not None and not sharded(self.model):
            # only the masked position goes through the vocabulary projection (as the MaskedLM objective does);
            # a sharded model runs whole, so that its root's weights are gathered
            return head(hidden_at(self.model.base_model, ids, mask, at))
        out = self.model(input_ids=ids, attention_mask=mask)
        logits = out.logits if getattr(out, "logits", None) is not None else out.prediction_logits
        return logits[torch.arange(len(ids), device=ids.device), at]

    @torch.no_grad()
    def score(self, items: list[tuple[list[int], list[int]]]) -> list[tuple[list[float], list[bool]]]:
        """For each `(ids, positions)` (text tokens without specials, at most `budget` of them): log p of the token
        at each position with that position masked and everything else visible, and whether it is the argmax.

        Each distinct masked input is run once: the choices " A".." D" of one question, masked, are the same
        input, and so is any continuation shared by several requests. Copies of similar length share a batch."""
        unique: dict[tuple, int] = {}  # (position, tokens before, tokens after) -> index into `inputs`
        inputs: list[tuple[list[int], int]] = []
        wanted: list[list[tuple[int, int]]] = []  # per item and position: (input index, target token)
        for ids, positions in items:
            wanted.append([])
            for p in positions:
                key = (p, tuple(ids[:p]), tuple(ids[p + 1 :]))
                if key not in unique:
                    unique[key] = len(inputs)
                    inputs.append((ids, p))
                wanted[-1].append((unique[key], ids[p]))
        targets: list[set[int]] = [set() for _ in inputs]
        for slots in wanted:
            for u, t in slots:
                targets[u].add(t)
        order = sorted(range(len(inputs)), key=lambda u: -len(inputs[u][0]))  # little padding per batch
        batches = [order[s : s + self.batch_size] for s in range(0, len(order), self.batch_size)]
        found: dict[tuple[int, int], tuple[float, bool]] = {}
        n_forwards = len(batches)
        if distributed() and sharded(self.model):
            # a sharded model gathers its weights in every forward: every rank must run as many forwards, so the
            # count is agreed on before the first one and ranks with fewer batches run padding forwards
            count = torch.tensor(n_forwards, device=self.device)
            dist.all_reduce(count, op=dist.ReduceOp.MAX)
            n_forwards = int(count)
        for b in tqdm(range(n_forwards), desc="Masked copies (PLL)", unit="batch", disable=not self.progress):
            if b >= len(batches):
                self._score_batch([self.prefix + [self.pad_id] + self.suffix], [len(self.prefix)], [(0, self.pad_id)])
                continue
            pairs = [(r, t) for r, u in enumerate(batches[b]) for t in sorted(targets[u])]
            lp, hit = self._score_batch(
                [self.prefix + list(inputs[u][0]) + self.suffix for u in batches[b]],
                [len(self.prefix) + inputs[u][1] for u in batches[b]],
                pairs,
            )
            for (r, t), value, best in zip(pairs, lp.tolist(), hit.tolist()):
                found[batches[b][r], t] = (value, best)
        return [([found[s][0] for s in slots], [found[s][1] for s in slots]) for slots in wanted]

    def _score_batch(
        self, seqs: list[list[int]], at: list[int], pairs: list[tuple[int, int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask row r of `seqs` at `at[r]`; for each `(r, token)` of `pairs`: log p(token) there, and is it the argmax."""
        ids = torch.full((len(seqs), max(map(len, seqs))), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, seq in enumerate(seqs):
            ids[r, : len(seq)], mask[r, : len(seq)] = torch.tensor(seq), 1
        ids[torch.arange(len(seqs)), at] = self.tokenizer.mask_token_id
        logits = self._forward(ids.to(self.device), mask.to(self.device), torch.tensor(at, device=self.device)).float()
        rows, tokens = (torch.tensor(c, device=self.device) for c in zip(*pairs))
        return logits.log_softmax(-1)[rows, tokens].cpu(), (logits.argmax(-1)[rows] == tokens).cpu()

    def rolling(self, ids: list[int], max_length: int | None = None, stride: int | None = None) -> list[float]:
        """PLL of every token of a long sequence, in windows of at most `max_length` tokens (specials included)
        advancing by `stride` (rolling.windows); each token is scored once, with its window on both sides."""
        length = min(max_length or self.max_length, self.max_length) - len(self.prefix) - len(self.suffix)
        wins = windows(len(ids), length, stride or length)
        scored = self.score(
            [(ids[w.begin : w.end], list(range(w.score_from - w.begin, w.end - w.begin))) for w in wins]
        )
        return [lp for lps, _ in scored for lp in lps]


class MaskedLMHarness(RankAware, LM):
    """lm-eval's `LM` for a masked LM: `loglikelihood` and `loglikelihood_rolling` by pseudo-log-likelihood.
    Continuations longer than the model's window are scored on their last tokens (`truncated` counts them)."""

    truncated = 0

    def __init__(self, model, tokenizer, batch_size: int = 32, max_length: int | None = None, progress: bool = False):
        super().__init__()
        self.tokenizer = tokenizer
        self.scorer = PseudoLogLikelihood(model, tokenizer, batch_size, max_length, progress)

    @property
    def device(self) -> torch.device:
        return self.scorer.device

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """As lm-eval's `_encode_pair`: trailing spaces of the context move to the continuation, and the
        continuation's tokens are those of `context + continuation` after the context's."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole, ctx = self._encode(context + continuation), self._encode(context)
        return ctx, whole[len(ctx) :]

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        items = []
        for req in requests:
            ctx, cont = self.encode_pair(*req.args)
            ids = (ctx + cont)[-self.scorer.budget :]  # left-truncated, as lm-eval truncates causal inputs
            n = min(len(cont), len(ids))
            self.truncated += n < len(cont)
            items.append((ids, list(range(len(ids) - n, len(ids)))))
        return [(sum(lp), all(g)) for lp, g in self.scorer.score(items)]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        window = min(self.scorer.max_length, MASKED_WINDOW)  # each token costs a forward of the whole window
        return [sum(self.scorer.rolling(self._encode(req.args[0]), window)) for req in requests]

    def generate_until(self, requests, disable_tqdm: bool = False):
        tasks = sorted({getattr(r, "task_name", None) or "?" for r in requests})
        raise InputError(
            f"task(s) {', '.join(tasks)} generate text, which a masked LM cannot do: use a causal or "
            f"seq2seq model, or tasks scored by log-likelihood"
        )
