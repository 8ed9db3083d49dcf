"""ELECTRA: discriminator labels are "sampled != original", the sample follows the generator's softmax without a
gradient, one shared embeddings tensor (once in the optimizer), the generator's width, the losses equal torch's and
HF's, a fixed batch is overfit, the prior-bias start, replaced-token detection metrics (hand-computed, logged the
Lightning way), and a CLI run whose loss falls, whose export loads in transformers and whose discriminator
fine-tunes with SequenceClassifier."""

import json
import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from conftest import FAST, REPO, cli, only_run_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import (
    AutoModelForPreTraining,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    ElectraConfig,
    ElectraForMaskedLM,
    ElectraForPreTraining,
    ElectraModel,
    LlamaConfig,
    ModernBertConfig,
    ModernBertForMaskedLM,
    ModernBertForTokenClassification,
)

from lightning_pretrain.callbacks.export import export_checkpoint
from lightning_pretrain.data.contract import IGNORE_INDEX, DataContract
from lightning_pretrain.errors import InputError
from lightning_pretrain.objectives import ELECTRA
from lightning_pretrain.objectives.electra import SAMPLE_STREAM, replace_tokens, sample_tokens
from lightning_pretrain.objectives.electra_generator import generator_config
from lightning_pretrain.objectives.electra_metrics import ElectraLosses, detection_metrics, update_detection
from lightning_pretrain.objectives.pretraining import seeded_generator

VOCAB, MASK = 200, 4
TINY = dict(
    embedding_size=32,
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
)


class _Tok:
    """The facts MaskedLM/ELECTRA read from a tokenizer."""

    mask_token_id, pad_token_id = MASK, 0
    bos_token_id = eos_token_id = sep_token_id = cls_token_id = None
    all_special_ids = [0, 1, 2, 3, 4]

    def __len__(self):
        return VOCAB


def module(**kwargs) -> ELECTRA:
    torch.manual_seed(0)
    return ELECTRA(model=ElectraConfig(**TINY), data=DataContract(_Tok()), **kwargs)


def batch(rows=4, length=48):
    return torch.randint(5, VOCAB, (rows, length), generator=torch.Generator().manual_seed(1))


def test_replace_tokens_labels_a_sample_equal_to_the_original_as_original():
    ids = torch.tensor([[10, 11, 12, 13], [20, 21, 22, 23]])
    selected = torch.tensor([[True, False, True, False], [False, True, True, True]])
    sampled = torch.tensor([10, 99, 5, 22, 7])  # row-major: (0,0) same, (0,2) new, (1,1) new, (1,2) same, (1,3) new
    inputs, labels = replace_tokens(ids, selected, sampled)
    assert inputs.tolist() == [[10, 11, 99, 13], [20, 5, 22, 7]]
    assert labels.tolist() == [[0, 0, 1, 0], [0, 1, 0, 1]]


def test_sample_follows_the_softmax_reproducibly_and_carries_no_gradient():
    logits = torch.tensor([0.0, 3.0, 2.0, -1.0]).log_softmax(-1).repeat(40_000, 1).requires_grad_()
    draw = sample_tokens(logits, torch.Generator().manual_seed(3))
    assert not draw.requires_grad and draw.grad_fn is None
    assert torch.equal(draw, sample_tokens(logits, torch.Generator().manual_seed(3)))
    freq = torch.bincount(draw, minlength=4).float() / len(draw)
    torch.testing.assert_close(freq, logits[0].detach().softmax(-1), atol=0.01, rtol=0)


def test_generator_is_a_quarter_as_wide_with_the_same_embeddings():
    config = ElectraConfig(embedding_size=128, hidden_size=256, num_attention_heads=4, intermediate_size=1024)
    gen = generator_config(config, 0.25)
    assert (gen.hidden_size, gen.num_attention_heads, gen.intermediate_size) == (64, 1, 256)
    assert gen.embedding_size == 128 and gen.num_hidden_layers == config.num_hidden_layers
    assert config.hidden_size == 256  # the discriminator's config is left alone


def test_embeddings_are_one_tensor_and_once_in_the_optimizer():
    m = module()
    disc, gen = m.model.electra.embeddings, m.generator.electra.embeddings
    assert gen is disc and m.generator.config.hidden_size == 8 and m.model.config.hidden_size == 32
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        a, b = getattr(disc, name).weight, getattr(gen, name).weight
        assert a is b and a.data_ptr() == b.data_ptr()
    assert m.generator.generator_lm_head.weight is disc.word_embeddings.weight  # the generator's tied output layer
    m.trainer = type("T", (), {"estimated_stepping_batches": 1000})()  # what configure_optimizers reads
    opt = m.configure_optimizers()["optimizer"]
    listed = [id(p) for g in opt.param_groups for p in g["params"]]
    unique = {id(p) for p in [*m.model.parameters(), *m.generator.parameters()]}
    assert len(listed) == len(set(listed)) == len(unique)
    assert len(unique) < len(list(m.model.parameters())) + len(list(m.generator.parameters()))


def test_a_generator_sampling_the_original_yields_no_replaced_token(monkeypatch):
    m = module()
    ids = batch()

    def certain(token):  # a generator whose whole mass is on one token per selected position
        def logits(inputs, selected, attention_mask):
            target = ids[selected] if token is None else torch.full((int(selected.sum()),), token)
            return torch.nn.functional.one_hot(target, VOCAB).float() * 1e4

        return logits

    monkeypatch.setattr(m, "generator_logits", certain(None))
    out = m.losses(ids, 0, 0)
    assert out.selected > 0 and out.labels.sum() == 0 and len(out.labels) == ids.numel()
    monkeypatch.setattr(m, "generator_logits", certain(MASK))  # never an original (ids >= 5): every selected one
    out = m.losses(ids, 0, 0)
    assert out.labels.sum() == out.selected


def test_no_gradient_flows_through_the_sample_into_the_generator():
    m = module()
    out = m.losses(batch(), 0, 0)
    out.disc.backward(retain_graph=True)
    shared = {id(p) for p in m.model.electra.embeddings.parameters()}
    generator_only = [(n, p) for n, p in m.generator.named_parameters() if id(p) not in shared]
    assert generator_only and all(p.grad is None for _, p in generator_only), [
        n for n, p in generator_only if p.grad is not None
    ]
    assert m.model.electra.embeddings.word_embeddings.weight.grad is not None  # the shared tensor learns from both
    out.gen.backward()
    assert all(p.grad is not None for _, p in generator_only)  # the MLM loss trains them


def test_the_discriminator_s_inputs_labels_and_losses_by_hand():
    m = module().eval()  # dropout off: the passes below are compared with the objective's
    ids = batch()
    out = m.losses(ids, 0, 0)
    inputs, mlm_labels = m.corrupt(ids, 0, 0)
    selected = mlm_labels != IGNORE_INDEX
    assert (inputs[selected] == MASK).all() and torch.equal(inputs[~selected], ids[~selected])  # mask_fraction 1
    # replay the sample (its own seeded stream) and rebuild the discriminator's input: the labels are aligned with it
    g = seeded_generator(ids.device, m.mask_seed, 0, 0, m.global_rank, SAMPLE_STREAM)
    sampled = sample_tokens(m.generator_logits(inputs, selected, None), g)
    disc_inputs = ids.clone()
    disc_inputs[selected] = sampled
    labels = (disc_inputs != ids).long()
    assert torch.equal(labels.flatten(), out.labels) and labels[~selected].sum() == 0
    assert out.selected == int(selected.sum()) and 0 < out.labels.sum() <= out.selected
    # the generator's loss is HF's own MLM loss; the discriminator's is torch's BCE and HF's own `labels=` loss
    torch.testing.assert_close(out.gen, m.generator(input_ids=inputs, labels=mlm_labels).loss)
    hf = m.model(input_ids=disc_inputs, labels=labels)
    torch.testing.assert_close(hf.logits.flatten(), out.logits)
    torch.testing.assert_close(out.disc, F.binary_cross_entropy_with_logits(out.logits, out.labels.float()))
    torch.testing.assert_close(out.disc, hf.loss)


def test_a_fixed_batch_is_overfit_and_every_parameter_learns():
    m = module()
    ids = batch()
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3)
    first = m.losses(ids, 0, 0)
    (first.gen + 50 * first.disc).backward()
    # both losses reach every parameter: the discriminator's head and encoder, the generator, the shared embeddings
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters()), [
        n for n, p in m.named_parameters() if p.grad is None or p.grad.abs().sum() == 0
    ]
    for _ in range(60):
        opt.zero_grad()
        out = m.losses(ids, 0, 0)
        (out.gen + 50 * out.disc).backward()
        opt.step()
    out = m.losses(ids, 0, 0)
    recall = ((out.logits > 0) & out.labels.bool()).sum() / out.labels.sum()
    assert out.gen < first.gen - 1 and out.disc < 0.5 * first.disc and recall > 0.5, (out, recall)


def test_a_fresh_discriminator_starts_at_the_prior_log_odds():
    bias = module(mlm_probability=0.2).model.discriminator_predictions.dense_prediction.bias
    torch.testing.assert_close(bias.sigmoid(), torch.tensor([0.2]))  # the BCE of the constant prior from step 0
    assert module(prior_bias=False).model.discriminator_predictions.dense_prediction.bias.abs().max() < 1e-6


def _losses(logits, labels, gen=2.0, selected=3) -> ElectraLosses:
    return ElectraLosses(torch.tensor(gen), torch.tensor(0.0), torch.tensor(logits), torch.tensor(labels), selected)


def test_detection_metrics_equal_hand_computed_ones():
    metrics = detection_metrics("val")
    # batch 1: calls (logit > 0) 1 1 0 0 0 1 against labels 1 0 1 0 0 1: TP 2, FP 1, FN 1, TN 2
    update_detection(metrics, _losses([2.0, 0.5, -1.0, -3.0, -0.1, 4.0], [1, 0, 1, 0, 0, 1], gen=2.0, selected=3))
    # batch 2: calls 0 1 0 0 against labels 1 1 0 0: TP 1, FN 1, TN 2
    update_detection(metrics, _losses([-2.0, 1.0, -1.0, -1.0], [1, 1, 0, 0], gen=5.0, selected=1))
    tp, fp, fn, tn = 3, 1, 2, 4
    got = {k: float(v) for k, v in metrics.compute().items()}
    expect = {
        "val/disc_acc": (tp + tn) / 10,
        "val/disc_precision": tp / (tp + fp),
        "val/disc_recall": tp / (tp + fn),
        "val/disc_f1": 2 * tp / (2 * tp + fp + fn),
        "val/gen_loss": (2.0 * 3 + 5.0 * 1) / 4,  # per selected position
        "val/replaced_fraction": 5 / 10,  # per token
        # AUROC: the share of (replaced, original) pairs ranked right, by hand over the 5 x 5 pairs
        "val/disc_auroc": sum(
            (p > n) + 0.5 * (p == n) for p in (2.0, -1.0, 4.0, -2.0, 1.0) for n in (0.5, -3.0, -0.1, -1.0, -1.0)
        )
        / 25,
    }
    assert got.keys() == expect.keys()
    for k in expect:
        assert got[k] == pytest.approx(expect[k], abs=1e-6), k


def test_an_all_original_discriminator_has_recall_zero():
    metrics = detection_metrics("val")
    update_detection(metrics, _losses([-1.8] * 8, [1, 0, 0, 0, 1, 0, 0, 0]))
    got = {k: float(v) for k, v in metrics.compute().items()}
    assert got["val/disc_recall"] == got["val/disc_precision"] == got["val/disc_f1"] == 0.0
    assert got["val/disc_acc"] == 1 - got["val/replaced_fraction"] == 0.75 and got["val/disc_auroc"] == 0.5


def test_lightning_logs_the_detection_metrics_per_stage_and_resets_them(tmp_path):
    m = module().eval()  # as validate and test run it: dropout off
    batches = [(batch(rows=2, length=32) + i - 5) % (VOCAB - 5) + 5 for i in range(3)]
    outs = [m.losses(b, -1, i) for i, b in enumerate(batches)]
    calls, labels = torch.cat([(o.logits > 0).long() for o in outs]), torch.cat([o.labels for o in outs])
    tp = int((calls & labels).sum())
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    for stage, run in (("val", trainer.validate), ("test", trainer.test), ("val", trainer.validate)):
        metrics = run(m, dataloaders=torch.utils.data.DataLoader(torch.cat(batches), batch_size=2), verbose=False)[0]
        assert metrics[f"{stage}/disc_recall"] == pytest.approx(tp / max(int(labels.sum()), 1), abs=1e-6)
        assert metrics[f"{stage}/disc_precision"] == pytest.approx(tp / max(int(calls.sum()), 1), abs=1e-6)
        assert metrics[f"{stage}/replaced_fraction"] == pytest.approx(float(labels.float().mean()), abs=1e-6)
        assert metrics[f"{stage}/loss"] == pytest.approx(
            sum(float(o.disc) * len(o.labels) for o in outs) / len(labels), abs=1e-5
        )
        assert not any(k.startswith("val/" if stage == "test" else "test/") for k in metrics)


def test_a_model_without_a_masked_lm_head_is_refused():
    with pytest.raises(InputError, match="masked-LM head"):
        ELECTRA(
            model=LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
            data=DataContract(_Tok()),
        )
    with pytest.raises(InputError, match="generator_size"):
        module(generator_size=0.0)


@pytest.fixture
def sst2_like(tmp_path):
    d = tmp_path / "sst2"
    d.mkdir()
    rows = [("a wonderful moving film" if i % 2 else "a dull tedious mess", i % 2) for i in range(32)]
    for split in ("train", "dev"):
        (d / f"{split}.tsv").write_text(
            "sentence\tlabel\n" + "".join(f"{t} {i}\t{y}\n" for i, (t, y) in enumerate(rows))
        )
    return d


def test_cli_trains_exports_and_the_discriminator_fine_tunes(workdir, tiny_corpus, sst2_like):
    cli(
        "fit",
        "-c",
        str(REPO / "configs/pretrain/electra_tiny.yaml"),
        *FAST,
        "--data.source",
        str(tiny_corpus),
        "--data.vocab_size",
        "500",
        "--trainer.max_steps",
        "8",
        "--trainer.val_check_interval",
        "4",
    )
    run = only_run_dir(workdir, "electra_tiny")
    acc = EventAccumulator(str(run)).Reload()
    assert {
        "train/gen_loss",
        "train/disc_loss",
        "train/disc_recall",
        "val/loss",
        "val/gen_loss",
        "val/disc_acc",
        "val/disc_precision",
        "val/disc_recall",
        "val/disc_f1",
        "val/disc_auroc",
        "val/replaced_fraction",
    } <= set(acc.Tags()["scalars"])
    loss = [e.value for e in acc.Scalars("train/loss")]
    assert len(loss) == 8 and sum(loss[-2:]) < sum(loss[:2]), loss
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 < metrics["val/replaced_fraction"] < 0.25 and 0 <= metrics["val/disc_acc"] <= 1
    assert all(0 <= metrics[f"val/disc_{k}"] <= 1 for k in ("precision", "recall", "f1", "auroc"))

    hf = run / "hf"
    disc = AutoModelForPreTraining.from_pretrained(hf)
    assert type(disc) is ElectraForPreTraining and type(ElectraModel.from_pretrained(hf)) is ElectraModel
    gen = ElectraForMaskedLM.from_pretrained(hf / "generator")
    assert gen.config.hidden_size == disc.config.hidden_size // 4
    assert torch.equal(gen.electra.embeddings.word_embeddings.weight, disc.electra.embeddings.word_embeddings.weight)
    tok = AutoTokenizer.from_pretrained(hf)
    enc = tok(["the quick brown fox"], return_tensors="pt")
    assert disc(**enc).logits.shape == enc.input_ids.shape  # one replaced/original logit per token

    # the export continues as an ELECTRA run, its saved generator reloaded and tied again
    again = ELECTRA(model=str(hf), data=DataContract(tok, seq_len=128))
    assert again.generator.electra.embeddings is again.model.electra.embeddings
    torch.testing.assert_close(
        again.generator.generator_predictions.dense.weight, gen.generator_predictions.dense.weight
    )
    with torch.inference_mode():
        rows = again.eval().predict_step({"text": ["the quick brown fox"], "example_id": torch.tensor([7])}, 0)["rows"]
    assert rows[0]["id"] == 7 and all(0 <= t["replaced"] <= 1 for t in rows[0]["tokens"])
    assert [t["token"] for t in rows[0]["tokens"]] == tok.convert_ids_to_tokens(enc.input_ids[0])

    ckpt_file = next((run / "checkpoints").glob("*.ckpt"))
    exported = export_checkpoint(ckpt_file, workdir / "from_ckpt")  # lightning-pretrain-export: the discriminator
    assert type(AutoModelForPreTraining.from_pretrained(exported)) is ElectraForPreTraining
    ckpt = torch.load(ckpt_file, weights_only=True)
    listed = sum(len(g["params"]) for g in ckpt["optimizer_states"][0]["param_groups"])
    assert listed == len({id(p) for p in [*again.model.parameters(), *again.generator.parameters()]})

    cli(
        "fit",
        "-c",
        str(REPO / "configs/finetune/sst2.yaml"),
        "-c",
        str(REPO / "configs/finetune/modes/full.yaml"),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--model.backbone",
        str(hf),
        "--data.source",
        str(sst2_like),
        "--trainer.max_steps",
        "2",
    )
    finetuned = only_run_dir(workdir, "sst2")
    assert "val/acc" in json.loads((finetuned / "metrics.json").read_text())
    assert json.loads((finetuned / "hf" / "config.json").read_text())["architectures"] == [
        "ElectraForSequenceClassification"
    ]


MODERNBERT = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    max_position_embeddings=64,
    layer_types=["full_attention"] * 2,
)


def test_a_rotary_modernbert_discriminator_trains_beside_a_narrower_generator_of_its_own(tmp_path):
    torch.manual_seed(0)
    m = ELECTRA(model=ModernBertConfig(**MODERNBERT), data=DataContract(_Tok()), generator_size=0.25)
    assert type(m.model) is ModernBertForTokenClassification and m.model.config.num_labels == 1
    assert type(m.generator) is ModernBertForMaskedLM and m.generator.config.hidden_size == 16
    assert not m.shares_embeddings  # a narrower ModernBERT embeds in its own width
    assert m.output_layer().bias.item() == pytest.approx(math.log(0.15 / 0.85))  # the prior bias
    out = m.losses(batch(), 0, 0)
    assert out.logits.dim() == 1 and out.logits.numel() == batch().numel() and out.selected > 0
    (out.gen + m.disc_weight * out.disc).backward()
    assert [n for n, p in m.named_parameters() if p.grad is None] == []  # both losses reach every parameter

    # the export: a token classifier that SequenceClassifier's Auto class loads, and a reloadable generator
    tok = _Tok()
    tok.save_pretrained = lambda d: None
    m.tokenizer = tok
    hf = m.export_hf(tmp_path / "hf")
    assert type(ModernBertForMaskedLM.from_pretrained(hf / "generator")) is ModernBertForMaskedLM
    clf, info = AutoModelForSequenceClassification.from_pretrained(
        hf, num_labels=2, ignore_mismatched_sizes=True, output_loading_info=True
    )
    fresh = [k if isinstance(k, str) else k[0] for k in [*info["mismatched_keys"], *info["missing_keys"]]]
    assert fresh and {k.split(".")[0] for k in fresh} == {"classifier"}  # the encoder and its head carry over
    again = ELECTRA(model=str(hf), data=DataContract(_Tok()))
    torch.testing.assert_close(again.generator.state_dict(), m.generator.state_dict())
    torch.testing.assert_close(again.model.state_dict(), m.model.state_dict())


def test_a_shallower_generator_as_wide_shares_the_token_embeddings_and_they_learn_from_both_losses(tmp_path):
    torch.manual_seed(0)
    m = ELECTRA(model=ModernBertConfig(**MODERNBERT), data=DataContract(_Tok()), generator_size=1.0, generator_layers=1)
    gen, disc = m.generator, m.model
    assert len(gen.model.layers) == 1 and gen.config.layer_types == ["full_attention"]
    assert len(disc.model.layers) == 2 and disc.config.num_hidden_layers == 2  # the discriminator is left alone
    assert m.shares_embeddings and gen.decoder.weight is disc.get_input_embeddings().weight  # tied output layer too
    out = m.losses(batch(), 0, 0)
    out.gen.backward(retain_graph=True)  # the generator's MLM loss alone reaches the shared matrix...
    from_gen = disc.get_input_embeddings().weight.grad.clone()
    assert from_gen.abs().sum() > 0
    m.zero_grad()
    (m.disc_weight * out.disc).backward()  # ...and so does the discriminator's
    assert disc.get_input_embeddings().weight.grad.abs().sum() > 0
    m.trainer = type("T", (), {"estimated_stepping_batches": 1000})()
    opt = m.configure_optimizers()["optimizer"]
    listed = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(listed) == len(set(listed))  # the shared matrix once

    tok = _Tok()
    tok.save_pretrained = lambda d: None
    m.tokenizer = tok
    hf = m.export_hf(tmp_path / "hf")
    again = ELECTRA(model=str(hf), data=DataContract(_Tok()), generator_size=1.0, generator_layers=1)
    assert again.shares_embeddings and len(again.generator.model.layers) == 1
    torch.testing.assert_close(again.generator.state_dict(), m.generator.state_dict())
    torch.testing.assert_close(again.model.state_dict(), m.model.state_dict())


def test_generator_layers_below_one_are_refused():
    with pytest.raises(InputError, match="generator_layers must be at least 1"):
        module(generator_layers=0)
