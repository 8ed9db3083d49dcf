"""Generation metrics equal the reference implementations on a fixed set of strings: sacreBLEU's own `corpus_bleu` /
`corpus_chrf` (0-100, also when fed in several batches), Google's `rouge_score` for ROUGE-1/2/L; exact match
normalises whitespace only; unknown metric names are refused."""

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from lightning_pretrain.errors import InputError
from lightning_pretrain.finetune.text_metrics import text_metrics

HYPS = [
    "the cat sat on the mat",
    "a dog runs in the park today",
    "hello world",
    "Ein Mann fährt mit dem Fahrrad über eine Brücke.",
    "Zwei Kinder spielen im Schnee",
    "",
    "x y z",
]
REFS = [
    "the cat is on the mat",
    "a dog ran in the park",
    "hello there world",
    "Ein Mann fährt Fahrrad auf einer Brücke.",
    "Zwei Kinder spielen im Schnee.",
    "nothing here",
    "x y z",
]


def scores(names, batches):
    metrics = text_metrics(names)
    for lo, hi in batches:
        metrics.update(HYPS[lo:hi], REFS[lo:hi])
    return {k: v.item() for k, v in metrics.compute().items()}


@pytest.mark.parametrize("batches", [[(0, 7)], [(0, 2), (2, 3), (3, 7)]])
def test_sacrebleu_and_chrf_equal_sacrebleus_own(batches):
    got = scores(["sacrebleu", "chrf"], batches)
    bleu = sacrebleu.corpus_bleu(HYPS, [REFS]).score
    assert 5 < bleu < 95  # a score on sacreBLEU's 0-100 scale, with partial matches (smoothing matters)
    assert got["sacrebleu"] == pytest.approx(bleu, abs=1e-4)
    assert got["chrf"] == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score, abs=1e-4)


def test_sacrebleu_smoothing_is_sacrebleus():
    """No sentence shares a 4-gram: unsmoothed BLEU would be 0, sacreBLEU's default exponential smoothing is not."""
    hyps, refs = HYPS[:3], REFS[:3]
    metrics = text_metrics(["sacrebleu"])
    metrics.update(hyps, refs)
    expected = sacrebleu.corpus_bleu(hyps, [refs]).score
    assert expected > 0 and metrics.compute()["sacrebleu"].item() == pytest.approx(expected, abs=1e-4)


def test_rouge_equals_rouge_score():
    got = scores(["rouge1", "rouge2", "rougeL"], [(0, 7)])
    # the English rows only: torchmetrics and rouge_score both keep [a-z0-9] tokens, which drops umlauts alike
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    per_row = [scorer.score(r, h) for h, r in zip(HYPS, REFS)]
    for key in ("rouge1", "rouge2", "rougeL"):
        expected = 100 * sum(s[key].fmeasure for s in per_row) / len(per_row)
        assert got[key] == pytest.approx(expected, abs=1e-3)
    assert 0 < got["rouge2"] < got["rouge1"] < 100


def test_exact_match_normalises_whitespace_only():
    metrics = text_metrics(["exact_match"])
    metrics.update(["a  b\n", "A b", " c d"], ["a b", "a b", "c d"])
    assert metrics.compute()["exact_match"].item() == pytest.approx(200 / 3)


@pytest.mark.parametrize("names", [["bleu"], ["rougeLsum"], ["chrf", "chrf"]])
def test_unknown_or_repeated_metric_names_are_refused(names):
    with pytest.raises(InputError, match="sacrebleu, chrf, rouge1"):
        text_metrics(names)
