"""The chunked linear + cross-entropy equals autograd's `F.cross_entropy(F.linear(...))` in value and gradients,
and CausalLM's loss with it equals the HF model's `labels=` loss."""

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, LlamaConfig

from lightning_pretrain.data.contract import DataContract
from lightning_pretrain.objectives import CausalLM, causal_lm
from lightning_pretrain.objectives.linear_cross_entropy import linear_cross_entropy


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk_rows", [1, 7, 64, 1000])
def test_matches_autograd_in_value_and_gradients(bias, chunk_rows):
    g = torch.Generator().manual_seed(chunk_rows)
    rows, features, vocab = 50, 16, 97
    hidden = torch.randn(rows, features, generator=g, dtype=torch.float64)
    weight = torch.randn(vocab, features, generator=g, dtype=torch.float64)
    b = torch.randn(vocab, generator=g, dtype=torch.float64) if bias else None
    targets = torch.randint(0, vocab, (rows,), generator=g)
    targets[::5] = -100  # ignored rows count neither in the loss nor in its mean

    def grads(loss_fn):
        inputs = [t.clone().requires_grad_() for t in (hidden, weight, *([b] if bias else []))]
        loss = loss_fn(*inputs)
        (3.0 * loss).backward()  # a non-unit upstream gradient must scale every stored gradient
        return loss.detach(), [t.grad for t in inputs]

    ref_loss, ref_grads = grads(lambda h, w, *bb: F.cross_entropy(F.linear(h, w, *bb), targets))
    loss, got = grads(lambda h, w, *bb: linear_cross_entropy(h, w, targets, *bb, chunk_rows=chunk_rows))
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
    for a, r in zip(got, ref_grads):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12)


def test_tied_weight_gradients_add_up_and_no_grad_mode_skips_them():
    emb = torch.nn.Embedding(31, 8)
    ids = torch.randint(0, 31, (4, 6))
    hidden = torch.tanh(emb(ids[:, :-1])).reshape(-1, 8)
    targets = ids[:, 1:].reshape(-1)
    linear_cross_entropy(hidden, emb.weight, targets, chunk_rows=5).backward()
    ours = emb.weight.grad.clone()
    emb.weight.grad = None
    hidden = torch.tanh(emb(ids[:, :-1])).reshape(-1, 8)
    F.cross_entropy(hidden @ emb.weight.t(), targets).backward()
    torch.testing.assert_close(ours, emb.weight.grad)
    with torch.no_grad():
        value = linear_cross_entropy(hidden, emb.weight, targets)
    assert not value.requires_grad
    torch.testing.assert_close(value, F.cross_entropy(hidden @ emb.weight.t(), targets))


def test_half_precision_weights_accumulate_in_fp32():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(64, 32, generator=g).bfloat16().requires_grad_()
    weight = (torch.randn(300, 32, generator=g) * 0.1).bfloat16().requires_grad_()
    targets = torch.randint(0, 300, (64,), generator=g)
    loss = linear_cross_entropy(hidden, weight, targets, chunk_rows=16)
    loss.backward()
    assert loss.dtype == torch.float32 and weight.grad.dtype == torch.bfloat16
    ref = F.cross_entropy(F.linear(hidden.detach().float(), weight.detach().float()), targets)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)


def test_all_rows_ignored_is_zero_not_nan():
    hidden = torch.randn(4, 3, requires_grad=True)
    weight = torch.randn(5, 3, requires_grad=True)
    loss = linear_cross_entropy(hidden, weight, torch.full((4,), -100))
    loss.backward()
    assert loss.item() == 0.0 and hidden.grad.abs().sum() == 0 and weight.grad.abs().sum() == 0


class _Tok:
    """The facts CausalLM reads from a tokenizer."""

    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2
    mask_token_id = sep_token_id = cls_token_id = None
    all_special_ids = [0, 1, 2]

    def __len__(self):
        return 300


@pytest.mark.parametrize(
    "config",
    [
        GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=64),  # tied head, no bias
        LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=64,
            tie_word_embeddings=False,
        ),
    ],
)
def test_causal_lm_chunked_loss_equals_hf_loss(config, monkeypatch):
    """CausalLM's chunked loss equals the HF model's `labels=` loss, with the gradients of every parameter."""
    calls = []
    monkeypatch.setattr(
        causal_lm, "linear_cross_entropy", lambda *a, **k: calls.append(1) or linear_cross_entropy(*a, **k)
    )
    module = CausalLM(model=config, data=DataContract(_Tok()))
    module.model.eval()  # dropout off so both paths see the same network
    batch = torch.randint(3, 300, (3, 40), generator=torch.Generator().manual_seed(0))
    params = [p for p in module.model.parameters() if p.requires_grad]
    ours = module.lm_loss(batch)
    g_ours = torch.autograd.grad(ours, params)
    assert calls == [1]  # the chunked path ran
    module.chunked_loss = False
    theirs = module.lm_loss(batch)
    g_theirs = torch.autograd.grad(theirs, params)
    torch.testing.assert_close(ours, theirs)
    for a, b in zip(g_ours, g_theirs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_causal_lm_chunked_loss_under_bf16_autocast():
    """Lightning's `bf16-mixed` runs the step under autocast: the chunked path gives HF's loss and fp32 gradients."""
    module = CausalLM(model=GPT2Config(n_embd=32, n_layer=1, n_head=2, n_positions=64), data=DataContract(_Tok()))
    module.model.eval()
    batch = torch.randint(3, 300, (2, 24), generator=torch.Generator().manual_seed(1))
    results = []
    for chunked in (True, False):
        module.chunked_loss = chunked
        module.model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = module.lm_loss(batch)
        loss.backward()
        grad = module.model.get_input_embeddings().weight.grad
        assert loss.dtype == torch.float32 and grad.dtype == torch.float32
        results.append((loss.detach(), grad.clone()))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=5e-2, atol=5e-3)
