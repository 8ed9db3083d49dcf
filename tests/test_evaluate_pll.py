"""Pseudo-log-likelihood for masked LMs: equal to a hand-written loop over masked positions (one full forward per
masked copy) for a tiny BERT, and the multiple-choice accuracy lm-eval computes from it is the argmax of the PLL
sums."""

from __future__ import annotations

import pytest
import torch
from test_evaluate_harness import loaded_tasks, task_files, tiny_bert  # noqa: F401 (fixtures)


@torch.no_grad()
def pll_by_hand(model, tok, ids: list[int], positions: list[int]) -> list[float]:
    out = []
    for p in positions:
        seq = [tok.cls_token_id, *ids, tok.sep_token_id]
        masked = list(seq)
        masked[p + 1] = tok.mask_token_id
        logp = model(input_ids=torch.tensor([masked])).logits[0, p + 1].log_softmax(-1)
        out.append(float(logp[seq[p + 1]]))
    return out


def test_pll_equals_a_loop_over_masked_positions(tiny_bert):  # noqa: F811
    from lightning_pretrain.evaluate.pll import PseudoLogLikelihood

    model, tok, _ = tiny_bert
    texts = ["the cat sat on a mat", "big red house under the tree because happy", "dog"]
    items = [(tok(t, add_special_tokens=False)["input_ids"], None) for t in texts]
    items = [(ids, list(range(len(ids)))) for ids, _ in items] + [(items[1][0], [2, 5])]
    scorer = PseudoLogLikelihood(model, tok, batch_size=5)  # batches mix copies of different texts and lengths
    for (ids, positions), (logps, greedy) in zip(items, scorer.score(items)):
        assert logps == pytest.approx(pll_by_hand(model, tok, ids, positions), abs=1e-5)
        assert len(greedy) == len(positions)
    # the rolling form scores every token once, each window a separate input with its own [CLS] ... [SEP]
    ids = tok(" ".join(texts * 3), add_special_tokens=False)["input_ids"]
    from lightning_pretrain.evaluate.rolling import windows

    wins = windows(len(ids), 8 - 2, 4)
    by_hand = [
        lp
        for w in wins
        for lp in pll_by_hand(model, tok, ids[w.begin : w.end], list(range(w.score_from - w.begin, w.end - w.begin)))
    ]
    assert len(by_hand) == len(ids)
    assert scorer.rolling(ids, max_length=8, stride=4) == pytest.approx(by_hand, abs=1e-5)


def test_pll_of_a_bert_for_pretraining_uses_its_mlm_head(tiny_bert):  # noqa: F811
    """The MLM+NSP objective's model (`BertForPreTraining`): same PLL as a BertForMaskedLM with its weights."""
    from transformers import BertForPreTraining

    from lightning_pretrain.evaluate.models import model_kind
    from lightning_pretrain.evaluate.pll import PseudoLogLikelihood

    model, tok, _ = tiny_bert
    both = BertForPreTraining(model.config).eval()
    missing, _ = both.load_state_dict(model.state_dict(), strict=False)
    assert model_kind(both) == "masked" and all("seq_relationship" in k or "pooler" in k for k in missing)
    ids = tok("the cat sat on a mat", add_special_tokens=False)["input_ids"]
    items = [(ids, list(range(len(ids))))]
    assert PseudoLogLikelihood(both, tok).score(items)[0][0] == pytest.approx(
        PseudoLogLikelihood(model, tok).score(items)[0][0], abs=1e-5
    )


def test_masked_lm_multiple_choice_is_the_argmax_of_pll(tiny_bert, task_files, tmp_path):  # noqa: F811
    from lightning_pretrain.evaluate import registry
    from lightning_pretrain.evaluate.harness import run_tasks
    from lightning_pretrain.evaluate.layouts import read_task_file
    from lightning_pretrain.evaluate.models import build_lm

    model, tok, _ = tiny_bert
    specs = registry.resolve([str(task_files["mc"])])
    lm = build_lm(model, tok, "masked", batch_size=16)
    (row,) = run_tasks(lm, specs, loaded_tasks(specs, tmp_path), bootstrap_iters=0)
    got = {m.name: m.value for m in row.metrics}

    def pll_sum(query: str, choice: str) -> float:
        ctx = tok(query, add_special_tokens=False)["input_ids"]
        whole = tok(query + " " + choice, add_special_tokens=False)["input_ids"]
        return sum(pll_by_hand(model, tok, whole, list(range(len(ctx), len(whole)))))

    rows = read_task_file(task_files["mc"]).rows
    acc = acc_norm = 0
    for r in rows:
        lls = [pll_sum(r["query"], c) for c in r["choices"]]
        acc += max(range(len(lls)), key=lambda i: lls[i]) == r["gold"]
        acc_norm += max(range(len(lls)), key=lambda i: lls[i] / len(r["choices"][i])) == r["gold"]
    assert (got["acc"], got["acc_norm"]) == pytest.approx((acc / len(rows), acc_norm / len(rows)))


@pytest.mark.parametrize("arch, attn", [("bert", "eager"), ("bert", "sdpa"), ("roberta", "sdpa")])
def test_last_layer_at_the_masked_position_equals_the_full_forward(arch, attn):
    """evaluate/last_layer.py runs a BERT-family encoder's last layer for the masked position only."""
    from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel

    from lightning_pretrain.evaluate.last_layer import bert_last_layer, hidden_at

    config_class, model_class = (BertConfig, BertModel) if arch == "bert" else (RobertaConfig, RobertaModel)
    torch.manual_seed(0)
    model = model_class(
        config_class(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            vocab_size=100,
            pad_token_id=1,
            attn_implementation=attn,
        ),
        add_pooling_layer=False,
    ).eval()
    assert bert_last_layer(model) is model.encoder.layer[-1]
    ids = torch.randint(5, 100, (5, 12))
    mask = torch.ones_like(ids)
    mask[2, 7:] = mask[4, 3:] = 0  # padded rows
    at = torch.tensor([0, 11, 6, 3, 2])
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask).last_hidden_state[torch.arange(5), at]
        assert torch.allclose(hidden_at(model, ids, mask, at), full, atol=1e-5)
        one = model(input_ids=ids[:1]).last_hidden_state[0, at[0]]  # no padding: no mask at all for sdpa
        assert torch.allclose(hidden_at(model, ids[:1], torch.ones_like(ids[:1]), at[:1])[0], one, atol=1e-5)
    assert not model.encoder.layer[-1]._forward_pre_hooks  # the hook is gone


def test_batched_deduplicated_pll_equals_one_forward_per_copy(tiny_bert):  # noqa: F811
    """The batched scorer (distinct masked inputs only, many per forward) gives the scores of the plain definition:
    one full forward per masked copy. Single-token continuations of one context are one masked input."""
    from lightning_pretrain.evaluate.models import build_lm

    model, tok, _ = tiny_bert

    class Request:
        def __init__(self, *args):
            self.args = args

    contexts = ["the cat sat on the mat because", "a big red house under the", "dog"]
    answers = [" happy", " sad", " water", " tree", " the cat ran quickly", " slowly"]
    requests = [Request(c, a) for c in contexts for a in answers] + [Request(contexts[0], " happy")]
    for batch_size in (1, 3, 64):
        lm = build_lm(model, tok, "masked", batch_size=batch_size)
        rows = []

        def counted(ids, mask, at, forward=lm.scorer._forward, rows=rows):
            rows.append(len(ids))
            return forward(ids, mask, at)

        lm.scorer._forward = counted
        got = lm.loglikelihood(requests)
        inputs = set()
        for req, (logp, _greedy) in zip(requests, got):
            ctx, cont = lm.encode_pair(*req.args)
            whole = ctx + cont
            positions = list(range(len(ctx), len(whole)))
            assert logp == pytest.approx(sum(pll_by_hand(model, tok, whole, positions)), abs=1e-5)
            inputs |= {(p, tuple(whole[:p]), tuple(whole[p + 1 :])) for p in positions}
        assert sum(rows) == len(inputs) < sum(len(lm.encode_pair(*r.args)[1]) for r in requests)
