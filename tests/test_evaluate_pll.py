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
    by_hand = [lp for w in wins for lp in pll_by_hand(model, tok, ids[w.begin:w.end],
                                                       list(range(w.score_from - w.begin, w.end - w.begin)))]
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
        PseudoLogLikelihood(model, tok).score(items)[0][0], abs=1e-5)


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
