"""Cross-entropy of a linear output layer, computed in chunks of rows without ever holding all the logits.

The loss and the gradients with respect to `hidden` and `W` are formed chunk by chunk in the forward pass, while a
chunk's logits are in cache (the softmax gradient is `softmax(logits) - onehot(target)`); backward only scales them.
Same matmuls as autograd, no recomputation: the speed is unchanged on CPU and the (tokens x vocab) logits and their
gradient are never held (Liger's fused kernel is GPU-only; neither PyTorch nor transformers has one for CPU).
Tested against `F.cross_entropy(F.linear(...))` (tests/test_linear_cross_entropy.py); docs/design/performance.md.
"""

from __future__ import annotations

import torch

from lightning_pretrain.data.contract import IGNORE_INDEX


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_rows):
        need_grad = any(ctx.needs_input_grad[:3])
        valid = targets != IGNORE_INDEX
        count = valid.sum()
        # logits, loss and the weight gradient's sum over chunks in fp32 at least (bf16/fp16 weights included)
        acc = torch.promote_types(weight.dtype, torch.float32)
        denominator = count.clamp(min=1).to(acc)
        total = torch.zeros((), dtype=acc, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if need_grad else None
        grad_weight = torch.zeros_like(weight, dtype=acc) if need_grad else None
        grad_bias = torch.zeros_like(bias, dtype=acc) if need_grad and bias is not None else None
        for start in range(0, hidden.shape[0], chunk_rows):
            h = hidden[start : start + chunk_rows]
            t = targets[start : start + chunk_rows]
            ok = valid[start : start + chunk_rows]
            logits = torch.nn.functional.linear(h, weight, bias).to(acc)
            lse = torch.logsumexp(logits, dim=-1)
            safe_t = torch.where(ok, t, 0)
            target_logit = logits.gather(1, safe_t[:, None]).squeeze(1)
            total += torch.where(ok, lse - target_logit, 0.0).sum()
            if not need_grad:
                continue
            # d(mean loss)/d(logits) = (softmax - onehot) / count on valid rows, 0 on ignored ones; in place
            g = logits.sub_(lse[:, None]).exp_()
            g.scatter_add_(1, safe_t[:, None], torch.full_like(target_logit[:, None], -1.0))
            g.mul_((ok.to(g.dtype) / denominator)[:, None])
            g = g.to(weight.dtype)
            grad_hidden[start : start + chunk_rows] = g @ weight
            grad_weight.addmm_(g.t().to(acc), h.to(acc))  # free when the weights are already `acc`
            if grad_bias is not None:
                grad_bias += g.to(acc).sum(0)
        if need_grad:
            ctx.save_for_backward(
                grad_hidden, grad_weight.to(weight.dtype), grad_bias.to(bias.dtype) if grad_bias is not None else None
            )
        ctx.has_bias = bias is not None
        return total / denominator

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        return (
            grad_hidden * grad_loss,
            grad_weight * grad_loss,
            grad_bias * grad_loss if ctx.has_bias else None,
            None,
            None,
        )


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    chunk_rows: int = 512,
) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T + bias` against `targets` over the rows whose target is not -100.

    Equal (to float rounding) to `F.cross_entropy(F.linear(hidden, weight, bias).float(), targets)`, in value and in
    gradients for `hidden`, `weight` and `bias`.

    Args:
        hidden: (rows, features) inputs of the output layer.
        weight: (vocab, features) output layer weight (a tied input embedding is fine: its gradients add up).
        targets: (rows,) class ids, -100 where a row is not predicted.
        bias: optional (vocab,) bias.
        chunk_rows: rows per chunk; (chunk_rows x vocab) fp32 logits exist at a time (512 x 16k: 32 MB).
    """
    return _LinearCrossEntropy.apply(hidden, weight, bias, targets, chunk_rows)
