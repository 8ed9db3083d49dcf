"""lm-eval's `HFLM` around a model already in memory (a loaded export, or the live model of a training run)."""

from __future__ import annotations

from lm_eval.models.huggingface import HFLM

from lightning_pretrain.evaluate.ranks import RankAware


class LiveHFLM(RankAware, HFLM):
    """`HFLM(pretrained=<PreTrainedModel>)` with torch.distributed ranks (`RankAware`), and continuations longer
    than the model's window scored on their last `max_length` tokens (lm-eval asserts instead; a 128-position
    model meets such PIQA answers). `truncated` counts them. A continuation the tokenizer merged into the context's
    last token is scored as that token, an empty context after the prefix token (lm-eval asserts on both)."""

    truncated = 0

    def _loglikelihood_tokens(self, requests, **kwargs):
        limit, fixed = self.max_length, []
        for key, context, continuation in requests:
            if not continuation:  # a small BPE vocabulary merged it into the context's last token (lm-eval asserts)
                context, continuation = context[:-1], context[-1:]
            if not context:
                context = [self.prefix_token_id]
            if len(continuation) > limit:
                self.truncated += 1
                context, continuation = context + continuation[:-limit], continuation[-limit:]
            fixed.append((key, context, continuation))
        return super()._loglikelihood_tokens(fixed, **kwargs)
