"""Documents packed into one block and kept apart (`--data.cross_document_attention false`): each document's logits
equal the document run alone (GPT-2, Llama, BERT, RoBERTa shapes; sdpa and eager), position ids restart, no label
crosses a boundary; the data module publishes the positions and the CLI trains with them."""

from __future__ import annotations

import pytest
import torch
from conftest import FAST, REPO, cli, only_run_dir
from transformers import AutoModel, BertConfig, GPT2Config, LlamaConfig, RobertaConfig

from lightning_pretrain import architecture
from lightning_pretrain.data import PretrainCorpus
from lightning_pretrain.data.contract import IGNORE_INDEX, DataContract
from lightning_pretrain.data.pretrain.blocks import BlockCollate, document_positions
from lightning_pretrain.document_attention import document_inputs, document_mask
from lightning_pretrain.objectives import CausalLM

SEP = 2
CONFIGS = {
    "gpt2": (GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=64, vocab_size=50), True),
    "llama": (
        LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=64,
            vocab_size=50,
        ),
        True,
    ),
    "bert": (
        BertConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            vocab_size=50,
        ),
        False,
    ),
    "roberta": (
        RobertaConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=70,
            vocab_size=50,
            pad_token_id=1,
        ),
        False,
    ),
}


def documents(lengths, seed=0) -> list[torch.Tensor]:
    """Documents of random non-special ids, each ending in the separator (as the packer writes them)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.cat([torch.randint(4, 50, (n - 1,), generator=g), torch.tensor([SEP])]) for n in lengths]


def test_positions_restart_after_every_separator_and_at_the_row_start():
    ids = torch.tensor([[7, 8, SEP, 9, SEP, SEP, 5, 6], [SEP, 4, 4, 4, SEP, 5, 5, 5]])
    assert document_positions(ids, SEP).tolist() == [[0, 1, 2, 0, 1, 0, 0, 1], [0, 0, 1, 2, 3, 0, 1, 2]]
    batch = BlockCollate(SEP)(list(ids))
    assert torch.equal(batch["input_ids"], ids) and torch.equal(batch["position_ids"], document_positions(ids, SEP))
    assert torch.equal(BlockCollate(None)(list(ids)), ids)  # documents not kept apart: plain blocks, as before


def test_the_mask_keeps_documents_apart_and_is_causal_for_decoders():
    pos = torch.tensor([[0, 1, 2, 0, 1]])
    causal, bidirectional = document_mask(pos)[0, 0], document_mask(pos, causal=False)[0, 0]
    assert causal.tolist() == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 1, 1]]
    assert bidirectional.tolist() == [[1, 1, 1, 0, 0]] * 3 + [[0, 0, 0, 1, 1]] * 2


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("kind", list(CONFIGS))
def test_each_document_of_a_packed_block_sees_only_itself(kind, attn):
    config, causal = CONFIGS[kind]
    model = AutoModel.from_config(config, attn_implementation=attn).eval()
    docs = documents([7, 12, 5, 9], seed=len(kind))
    block = torch.cat(docs)[None]
    position_ids = document_positions(block, SEP)
    offset = architecture.position_offset(config)
    inputs = document_inputs(position_ids, attn, causal, position_offset=offset)
    with torch.no_grad():
        packed = model(input_ids=block, **inputs).last_hidden_state[0]
        # negative control: continuous positions 0..L-1 and no mask (what `cross_document_attention true` feeds the
        # model), under which documents see each other on every transformers version (5.25 reads restarting
        # position ids of an encoder as packed documents, so restarting positions alone are no control)
        continuous = torch.arange(block.shape[1])[None] + offset
        plain = model(input_ids=block, position_ids=continuous).last_hidden_state[0]
        start = 0
        for doc in docs:
            alone = model(input_ids=doc[None]).last_hidden_state[0]  # the model's own positions and mask
            torch.testing.assert_close(packed[start : start + len(doc)], alone, rtol=1e-5, atol=1e-5)
            start += len(doc)
        assert not torch.allclose(packed[7:19], plain[7:19], atol=1e-3)


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_by_default_the_documents_of_a_block_see_each_other(kind, tiny_corpus, tmp_path):
    """`cross_document_attention true` (the default): the batch carries no restarting position ids, and the
    objective feeds the model exactly what continuous positions 0..L-1 without a mask give — documents attend to
    each other on every transformers version (5.25 reads restarting positions as packed documents)."""
    from lightning_pretrain.objectives import MaskedLM

    data = PretrainCorpus(
        source=str(tiny_corpus), vocab_size=400, seq_len=32, batch_size=4, cache_dir=str(tmp_path / "cache")
    )
    data.prepare_data()
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))
    assert isinstance(batch, torch.Tensor) and data.publish().cross_document_attention  # plain blocks
    config, causal = CONFIGS[kind]
    objective = CausalLM if causal else MaskedLM
    module = objective(model=config.__class__(**{**config.to_dict(), "vocab_size": 400}), data=data.contract).eval()
    ids, inputs = module.document_batch(batch)
    assert inputs == {}
    sep = data.tokenizer.eos_token_id if causal else data.tokenizer.sep_token_id
    assert (ids[:, 1:-1] == sep).any(), "the blocks hold several documents"
    offset = architecture.position_offset(module.model.config)
    with torch.no_grad():
        fed = module.model.base_model(input_ids=ids, **inputs).last_hidden_state
        continuous = module.model.base_model(
            input_ids=ids, position_ids=torch.arange(ids.shape[1]).expand_as(ids) + offset
        ).last_hidden_state
        apart = module.model.base_model(
            input_ids=ids, **document_inputs(document_positions(ids, sep), "sdpa", causal, position_offset=offset)
        ).last_hidden_state
    torch.testing.assert_close(fed, continuous, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(fed, apart, atol=1e-3)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("kind", list(CONFIGS))
def test_with_documents_kept_apart_our_mask_is_the_only_mask(kind, attn):
    """`cross_document_attention false`: the model applies the mask we pass and nothing derived from the restarting
    position ids on top of it (transformers looks for packed documents only when no mask is given). Shown by
    passing a mask that lets documents see each other with the same restarting positions: if transformers
    intersected its own packed mask with ours, the two runs would be identical."""
    config, causal = CONFIGS[kind]
    model = AutoModel.from_config(config, attn_implementation=attn).eval()
    block = torch.cat(documents([7, 12, 5, 9], seed=len(kind)))[None]
    position_ids = document_positions(block, SEP)
    offset = architecture.position_offset(config)
    kept_apart = document_inputs(position_ids, attn, causal, position_offset=offset)
    together = dict(kept_apart)
    length = block.shape[1]
    everything = torch.ones(length, length, dtype=torch.bool)
    everything = (everything.tril() if causal else everything)[None, None]
    together["attention_mask"] = (
        everything
        if attn == "sdpa"
        else torch.zeros(everything.shape).masked_fill(~everything, torch.finfo(torch.float32).min)
    )
    with torch.no_grad():
        apart = model(input_ids=block, **kept_apart).last_hidden_state[0]
        seen = model(input_ids=block, **together).last_hidden_state[0]
    torch.testing.assert_close(apart[:7], seen[:7], rtol=1e-5, atol=1e-5) if causal else None  # nothing before doc 1
    assert not torch.allclose(apart[7:19], seen[7:19], atol=1e-3)


class _Tok:
    pad_token_id, bos_token_id, eos_token_id = 0, 1, SEP
    mask_token_id = sep_token_id = cls_token_id = None
    all_special_ids = [0, 1, SEP]

    def __len__(self):
        return 50


@pytest.mark.parametrize("chunked", [True, False])
def test_causal_loss_of_a_packed_block_is_the_documents_losses_and_no_label_crosses(chunked):
    """The block's loss is the token-weighted mean of each document's own loss: no document's first token is
    predicted from the previous document, every other token is."""
    config = GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=64)
    module = CausalLM(
        model=config, data=DataContract(_Tok(), seq_len=33, cross_document_attention=False), chunked_loss=chunked
    )
    module.model.eval()
    docs = documents([6, 11, 9, 7], seed=3)
    block = torch.cat(docs)[None]
    batch = BlockCollate(SEP)([block[0]])
    labels = module.lm_labels(batch)[0]
    starts = torch.cumsum(torch.tensor([0] + [len(d) for d in docs[:-1]]), 0)
    assert (labels[starts] == IGNORE_INDEX).all() and (labels != IGNORE_INDEX).sum() == block.shape[1] - len(docs)
    with torch.no_grad():
        packed = module.lm_loss(batch)
        total = sum(module.lm_loss(d[None]) * (len(d) - 1) for d in docs)
    torch.testing.assert_close(packed, total / (block.shape[1] - len(docs)), rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # negative control: across documents the block's loss differs
        assert abs(module.lm_loss(block) - packed) > 1e-3


def test_the_corpus_publishes_restarting_positions(tiny_corpus, tmp_path):
    data = PretrainCorpus(
        source=str(tiny_corpus),
        vocab_size=400,
        seq_len=32,
        batch_size=4,
        cache_dir=str(tmp_path / "cache"),
        cross_document_attention=False,
    )
    data.prepare_data()
    data.setup("fit")
    assert data.publish().cross_document_attention is False
    batch = next(iter(data.val_dataloader()))
    sep = data.tokenizer.eos_token_id
    ids, pos = batch["input_ids"], batch["position_ids"]
    assert (pos[:, 0] == 0).all() and (ids == sep).any()
    after = torch.zeros_like(ids, dtype=torch.bool)
    after[:, 1:] = ids[:, :-1] == sep
    assert (pos[after] == 0).all() and (pos[~after & (torch.arange(32) > 0)] > 0).all()


def test_cli_trains_causal_and_masked_lms_on_documents_kept_apart(workdir, tiny_corpus):
    for config in ("clm_tiny", "mlm_tiny"):
        cli(
            "fit",
            "-c",
            f"{REPO}/configs/pretrain/{config}.yaml",
            *FAST,
            "--data.source",
            str(tiny_corpus),
            "--data.cross_document_attention",
            "false",
            "--data.vocab_size",
            "400",
            "--data.seq_len",
            "32",
            "--data.batch_size",
            "4",
        )
        assert any((only_run_dir(workdir, config) / "checkpoints").glob("*.ckpt"))


def test_an_objective_that_cannot_keep_documents_apart_is_refused(workdir, tiny_corpus, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli(
            "fit",
            "-c",
            f"{REPO}/configs/pretrain/t5_tiny.yaml",
            *FAST,
            "--data.source",
            str(tiny_corpus),
            "--data.cross_document_attention",
            "false",
        )
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: SpanCorruption does not keep packed documents apart")


def test_a_streaming_corpus_publishes_restarting_positions(tiny_corpus, tmp_path):
    from lightning_pretrain.data import StreamingCorpus

    data = StreamingCorpus(
        source=str(tiny_corpus),
        vocab_size=400,
        seq_len=32,
        batch_size=4,
        num_workers=0,
        val_documents=20,
        cache_dir=str(tmp_path / "cache"),
        cross_document_attention=False,
    )
    data.setup("fit")
    stream = iter(torch.utils.data.DataLoader(data.train_dataset(), batch_size=4, collate_fn=data.collate))
    for batch in (next(stream), next(iter(data.val_dataloader()))):
        torch.testing.assert_close(
            batch["position_ids"], document_positions(batch["input_ids"], data.tokenizer.eos_token_id)
        )
        assert (batch["position_ids"] == 0).sum() > 4  # documents start inside the blocks, not only at row 0


@pytest.mark.parametrize("attn", ["flash_attention_2", "flex_attention"])
def test_varlen_kernels_get_one_row_of_restarting_positions(attn, monkeypatch):
    """With flash/flex attention a causal LM gets no mask: the batch's rows laid end to end as one row (transformers
    reads varlen boundaries from a single row's positions) and no KV cache. On CPU, transformers' sdpa builds the
    document mask from those positions (flash attention is GPU-only): the loss equals the documents run alone."""
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
    )
    module = CausalLM(model=config, data=DataContract(_Tok(), seq_len=16, cross_document_attention=False))
    module.model.eval()
    rows = [documents([6, 10], seed=1), documents([9, 4, 3], seed=2)]
    batch = BlockCollate(SEP)([torch.cat(r) for r in rows])
    monkeypatch.setattr(module.model.config, "_attn_implementation", attn)  # what document_batch reads
    ids, inputs = module.document_batch(batch)
    assert ids.shape == (1, 32) and inputs["position_ids"].shape == (1, 32) and "attention_mask" not in inputs
    assert inputs["use_cache"] is False
    monkeypatch.undo()  # the kernels themselves: sdpa with transformers' own packed-sequence mask
    with torch.no_grad():
        out = module.model.base_model(input_ids=ids, **inputs).last_hidden_state[0]
        start = 0
        for doc in (d for r in rows for d in r):
            alone = module.model.base_model(input_ids=doc[None]).last_hidden_state[0]
            torch.testing.assert_close(out[start : start + len(doc)], alone, rtol=1e-5, atol=1e-5)
            start += len(doc)
