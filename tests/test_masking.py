"""BERT masking: rates, the 80/10/10 split, special tokens untouched, and our sparse-head loss equal to HF's."""

import pytest
import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    ModernBertConfig,
    ModernBertForMaskedLM,
    RobertaConfig,
    RobertaForMaskedLM,
)

from lightning_pretrain.data.contract import IGNORE_INDEX, DataContract
from lightning_pretrain.objectives.masked_lm import MaskedLM, mask_tokens

VOCAB, MASK = 1000, 4
SPECIALS = torch.tensor([0, 1, 2, 3, 4])
REPLACE = torch.arange(5, VOCAB)


def draw(prob=0.15, mask_fraction=0.8, random_fraction=0.1, seed=0, shape=(64, 512)):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, shape, generator=g)
    ids[:, 0], ids[:, -1], ids[:, shape[1] // 2] = 2, 3, 0  # [CLS] ... [PAD] ... [SEP]: specials in every row
    inputs, labels = mask_tokens(ids, MASK, SPECIALS, REPLACE, prob, mask_fraction, random_fraction, generator=g)
    return ids, inputs, labels


@pytest.mark.parametrize("prob,mask_fraction,random_fraction", [(0.15, 0.8, 0.1), (0.3, 0.5, 0.3), (0.05, 1.0, 0.0)])
def test_rates_and_split(prob, mask_fraction, random_fraction):
    ids, inputs, labels = draw(prob, mask_fraction, random_fraction)
    selectable = ~torch.isin(ids, SPECIALS)
    selected = labels != IGNORE_INDEX
    n = selected.sum().item()
    assert abs(n / selectable.sum().item() - prob) < 0.01
    as_mask = (inputs == MASK) & selected
    unchanged = (inputs == ids) & selected
    # a random replacement can draw the original token (1/995 of the time); count it as "random" by construction
    as_random = selected & ~as_mask & ~unchanged
    assert abs(as_mask.sum().item() / n - mask_fraction) < 0.02
    assert abs(as_random.sum().item() / n - random_fraction) < 0.02
    assert abs(unchanged.sum().item() / n - (1 - mask_fraction - random_fraction)) < 0.02
    assert torch.equal(labels[selected], ids[selected])  # labels are the originals


def test_specials_never_touched_and_unselected_positions_unchanged():
    for seed in range(20):
        ids, inputs, labels = draw(prob=0.5, seed=seed, shape=(8, 256))
        special = torch.isin(ids, SPECIALS)
        assert (labels[special] == IGNORE_INDEX).all()
        assert torch.equal(inputs[special], ids[special])
        assert torch.equal(inputs[labels == IGNORE_INDEX], ids[labels == IGNORE_INDEX])
        assert not torch.isin(
            inputs[(labels != IGNORE_INDEX) & (inputs != MASK)], SPECIALS
        ).any()  # random never special


def test_same_generator_seed_same_mask():
    a, b = draw(seed=7), draw(seed=7)
    assert torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])
    assert not torch.equal(draw(seed=8)[1], a[1])


class _Tok:
    """The three facts MaskedLM reads from a tokenizer."""

    mask_token_id, pad_token_id = MASK, 0
    bos_token_id = eos_token_id = sep_token_id = cls_token_id = None
    all_special_ids = SPECIALS.tolist()

    def __len__(self):
        return VOCAB


@pytest.mark.parametrize(
    "config",
    [
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
        RobertaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
        ModernBertConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            layer_types=["full_attention", "sliding_attention"],
            local_attention=16,
        ),
    ],
)
def test_sparse_head_loss_equals_hf_loss(config):
    """Our loss on masked positions only equals the HF model's full-logit `labels=` loss, gradients included."""
    module = MaskedLM(model=config, data=DataContract(_Tok()))
    assert isinstance(module.model, (BertForMaskedLM, RobertaForMaskedLM, ModernBertForMaskedLM))
    assert module.mlm_head is not None
    module.model.eval()  # dropout off so both paths see the same network
    ids, inputs, labels = draw(shape=(4, 64))
    ours = module.mlm_loss(inputs, labels)
    (g_ours,) = torch.autograd.grad(ours, module.model.get_input_embeddings().weight)
    theirs = module.model(input_ids=inputs, labels=labels).loss
    (g_theirs,) = torch.autograd.grad(theirs, module.model.get_input_embeddings().weight)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(g_ours, g_theirs)
