"""lm-eval's `HFLM` around a model already in memory (a loaded export, or the live model of a training run)."""

from __future__ import annotations

from lm_eval.models.huggingface import HFLM

from lightning_pretrain.evaluate.ranks import RankAware


class LiveHFLM(RankAware, HFLM):
    """`HFLM(pretrained=<PreTrainedModel>)` with torch.distributed ranks (`RankAware`), and continuations longer
    than the model's window scored on their last `max_length` tokens (lm-eval asserts instead; a 128-position
    model meets such PIQA answers). `truncated` counts them."""

    truncated = 0

    def _loglikelihood_tokens(self, requests, **kwargs):
        limit, fixed = self.max_length, []
        for key, context, continuation in requests:
            if len(continuation) > limit:
                self.truncated += 1
                context, continuation = context + continuation[:-limit], continuation[-limit:]
            fixed.append((key, context, continuation))
        return super()._loglikelihood_tokens(fixed, **kwargs)
