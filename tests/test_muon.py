"""MuonAdamW: torch's Muon on the hidden matrices and torch's AdamW on the rest, step for step; its state resumes."""

import copy
import io

import pytest
import torch
from conftest import FAST, REPO, cli, only_run_dir
from transformers import LlamaConfig, LlamaForCausalLM, ModernBertConfig, ModernBertForMaskedLM

from lightning_pretrain import optim
from lightning_pretrain.muon import HIDDEN_MATRIX, MuonAdamW, mark_hidden_matrices


def tiny_modernbert():
    torch.manual_seed(0)
    cfg = ModernBertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
        max_position_embeddings=32, layer_types=["full_attention"] * 2, pad_token_id=0, bos_token_id=1,
        eos_token_id=2, cls_token_id=1, sep_token_id=2,
    )  # fmt: skip
    return ModernBertForMaskedLM(cfg)


def tagged(model):
    return {n for n, p in model.named_parameters() if getattr(p, HIDDEN_MATRIX, False)}


def test_marks_the_hidden_matrices_only():
    m = tiny_modernbert()
    mark_hidden_matrices(m)
    names = tagged(m)
    assert names and all(n.endswith(".weight") for n in names)
    assert not any("embeddings" in n or "norm" in n for n in names), names
    assert "decoder.weight" not in names  # the output layer ties to the token embeddings: AdamW's
    assert {"model.layers.0.attn.Wqkv.weight", "model.layers.1.mlp.Wo.weight", "head.dense.weight"} <= names
    llama = LlamaForCausalLM(
        LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48,
                    tie_word_embeddings=False)
    )  # fmt: skip
    mark_hidden_matrices(llama)
    assert "lm_head.weight" not in tagged(llama)  # an untied output embedding is AdamW's too
    assert "model.layers.0.self_attn.q_proj.weight" in tagged(llama)


def batch_loss(model, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 64, (4, 16), generator=g)
    return model(input_ids=ids, labels=ids).loss


def test_steps_equal_torch_muon_and_adamw():
    ours, ref = tiny_modernbert(), tiny_modernbert()
    ref.load_state_dict(ours.state_dict())
    for m in (ours, ref):
        mark_hidden_matrices(m)
    opt = MuonAdamW(optim.decay_groups(ours.named_parameters()), lr=3e-3, weight_decay=0.05)
    hidden = [p for p in ref.parameters() if getattr(p, HIDDEN_MATRIX, False)]
    rest = [p for p in ref.parameters() if not getattr(p, HIDDEN_MATRIX, False)]
    ref_muon = torch.optim.Muon(hidden, lr=3e-3, weight_decay=0.05, adjust_lr_fn="match_rms_adamw")
    ref_adam = torch.optim.AdamW(
        [{"params": [p for p in rest if p.ndim >= 2]}, {"params": [p for p in rest if p.ndim < 2], "weight_decay": 0}],
        lr=3e-3, betas=(0.9, 0.98), weight_decay=0.05,
    )  # fmt: skip
    before = {n: p.detach().clone() for n, p in ours.named_parameters()}
    for step in range(3):
        for m in (ours, ref):
            batch_loss(m, step).backward()
        opt.step()
        ref_muon.step()
        ref_adam.step()
        for o in (opt, ref_muon, ref_adam):
            o.zero_grad()
    for (name, p), q in zip(ours.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=name)
        assert not torch.equal(p, before[name]), f"{name} did not move"


def test_state_dict_round_trip_with_weights_only():
    model = tiny_modernbert()
    mark_hidden_matrices(model)
    opt = MuonAdamW(optim.decay_groups(model.named_parameters()), lr=1e-3)
    batch_loss(model, 0).backward()
    opt.step()
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    twin = copy.deepcopy(model)
    mark_hidden_matrices(twin)
    opt2 = MuonAdamW(optim.decay_groups(twin.named_parameters()), lr=1e-3)
    opt2.load_state_dict(state)
    assert [g["muon"] for g in opt2.param_groups] == [g["muon"] for g in opt.param_groups]
    for m, o in ((model, opt), (twin, opt2)):
        o.zero_grad()
        batch_loss(m, 1).backward()
        o.step()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="no parameter is a hidden matrix"):
        MuonAdamW(tiny_modernbert().parameters())
    model = tiny_modernbert()
    mark_hidden_matrices(model)
    with pytest.raises(ValueError, match="adjust_lr_fn"):
        MuonAdamW(model.parameters(), adjust_lr_fn="nope")


def test_pretraining_with_muon_checkpoints_and_resumes(workdir, tiny_corpus):
    tiny = [
        "-c", str(REPO / "configs/pretrain/mlm_laptop.yaml"), "--data.source", str(tiny_corpus),
        "--trainer.max_time", "null", "--data.vocab_size", "300", "--data.seq_len", "32", "--data.batch_size", "4",
        "--model.init_args.model.init_args.hidden_size", "32", "--model.init_args.model.init_args.num_hidden_layers",
        "1", "--model.init_args.model.init_args.num_attention_heads", "2",
        "--model.init_args.model.init_args.intermediate_size", "48",
        "--model.init_args.model.init_args.layer_types", "[full_attention]",
        "--model.init_args.optimizer.class_path", "lightning_pretrain.muon.MuonAdamW",
    ]  # fmt: skip
    cli("fit", *tiny, *FAST)
    run = only_run_dir(workdir, "mlm_laptop")
    (first,) = (run / "checkpoints").glob("*step=4.ckpt")
    ckpt = torch.load(first, weights_only=True)
    (opt,) = ckpt["optimizer_states"]
    muon_groups = [g for g in opt["param_groups"] if g["muon"]]
    assert muon_groups and all(g["adjust_lr_fn"] == "match_rms_adamw" for g in muon_groups)
    muon_ids = [i for g in muon_groups for i in g["params"]]
    assert all("momentum_buffer" in opt["state"][i] and "exp_avg" not in opt["state"][i] for i in muon_ids)
    cli("fit", *tiny, *FAST[2:], "--trainer.max_steps", "6", "--ckpt_path", str(first))
    (second,) = (only_run_dir(workdir, "mlm_laptop") / "checkpoints").glob("*step=6.ckpt")
    resumed = torch.load(second, weights_only=True)
    assert resumed["global_step"] == 6
    assert resumed["optimizer_states"][0]["state"][muon_ids[0]]["step"] == 6  # the momentum went on, not restarted
