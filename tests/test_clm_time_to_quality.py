"""benchmarks/clm_time_to_quality.py: the held-out cut, the crossing time, the bits per byte of both arms on one
model (the HF arm's model and our export give the same number, which is the NLL of a plain forward pass), and the
--tiny mode's two arms end to end on a corpus written here."""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import pytest
import torch
import transformers
from conftest import REPO

spec = importlib.util.spec_from_file_location("clm_time_to_quality", REPO / "benchmarks" / "clm_time_to_quality.py")
ttq = importlib.util.module_from_spec(spec)
sys.modules["clm_time_to_quality"] = ttq
spec.loader.exec_module(ttq)

WORDS = "the a cat dog sun tree ran saw big small happy sad little girl boy park ball home mom friend".split()


def story(i: int) -> str:
    words = [WORDS[(i * 7 + k * k) % len(WORDS)] for k in range(30 + i % 20)]
    return f"Once upon a time {' '.join(words)}.\nThey were happy — café {i}."


@pytest.fixture
def corpus_file(tmp_path):
    path = tmp_path / "stories.txt"
    path.write_text("".join(f"{story(i)}\n{ttq.DELIMITER}\n" for i in range(240)), encoding="utf-8")
    return path


def tiny_spec(tmp_path, corpus_file):
    train, heldout = ttq.split_corpus(corpus_file, tmp_path / "data", 0.05)
    spec = ttq.recipe(REPO / "configs/pretrain/clm_laptop.yaml", train, tiny=True)
    spec["data"]["init_args"].update(vocab_size=300, seq_len=32, batch_size=4)
    spec["model"]["init_args"]["model"]["init_args"]["max_position_embeddings"] = 32
    return spec, heldout


def test_split_holds_out_the_files_last_whole_documents(tmp_path, corpus_file):
    train, heldout = ttq.split_corpus(corpus_file, tmp_path / "data", 0.05)
    train_docs, held_docs = ttq.documents(train), ttq.documents(heldout)
    assert len(train_docs) + len(held_docs) == 240
    assert held_docs == [story(i).strip() for i in range(240 - len(held_docs), 240)]
    held_bytes = heldout.stat().st_size / corpus_file.stat().st_size
    assert 0.04 < held_bytes < 0.06
    with pytest.raises(ttq.InputError, match="held-out"):
        (tmp_path / "one.txt").write_text("no delimiter here\n")
        ttq.split_corpus(tmp_path / "one.txt", tmp_path / "data2", 0.05)


def test_time_to_reach_interpolates_the_first_crossing():
    curve = [
        {"elapsed_s": 0, "bpb": 8.0},
        {"elapsed_s": 10, "bpb": 4.0},
        {"elapsed_s": 20, "bpb": 2.0},
        {"elapsed_s": 30, "bpb": 2.5},
        {"elapsed_s": 40, "bpb": 1.0},
    ]
    assert ttq.time_to_reach(curve, 3.0) == pytest.approx(15.0)
    assert ttq.time_to_reach(curve, 2.0) == pytest.approx(20.0)  # reached at a snapshot
    assert ttq.time_to_reach(curve, 9.0) == 0  # the start already is
    assert ttq.time_to_reach(curve, 0.5) is None
    hf = [{"elapsed_s": 0, "bpb": 8.0, "final": False}, {"elapsed_s": 60, "bpb": 3.0, "final": True}]
    assert ttq.summary({"hf": hf, "ours": [dict(r, final=r is curve[-1]) for r in curve]})["speedup"] == 4.0


def test_both_arms_score_the_same_model_the_same(tmp_path, corpus_file):
    """Our export of a (briefly trained) model and the HF arm's in-memory model of the same weights give the same
    bits per byte, and it is the NLL of each held-out document token from one plain forward pass over the stream
    (the EOS separators are context only) over the documents' UTF-8 bytes."""
    from lightning_pretrain.objectives import CausalLM

    spec, heldout = tiny_spec(tmp_path, corpus_file)
    dm = ttq.corpus(spec)
    dm.prepare_data()
    dm.setup("fit")
    torch.manual_seed(0)
    module = CausalLM(model=ttq.model_config(spec), data=dm.publish())
    opt = torch.optim.AdamW(module.parameters(), lr=3e-3)
    for batch in list(dm.train_dataloader())[:5]:  # away from init, where every model is uniform-ish
        module.lm_loss(batch).backward()
        opt.step()
        opt.zero_grad()
    ours = transformers.AutoModelForCausalLM.from_pretrained(module.export_hf(tmp_path / "export"))
    hf, _ = ttq.hf_model("clm", ttq.model_config(spec), dm.tokenizer)
    hf.load_state_dict(module.model.state_dict())
    docs, tok = ttq.documents(heldout)[:3], dm.tokenizer
    sep = tok.eos_token_id
    stream, scored = [sep], []
    for d in docs:
        ids = tok(d, add_special_tokens=False)["input_ids"]
        stream, scored = stream + ids + [sep], scored + [True] * len(ids) + [False]
    hf.eval()
    with torch.no_grad():  # one plain forward over the whole stream (rotary positions: any length)
        logp = hf(input_ids=torch.tensor([stream])).logits[0, :-1].log_softmax(-1)
    nll = -logp.gather(1, torch.tensor(stream[1:])[:, None])[:, 0][torch.tensor(scored)].sum().item()
    expected = nll / (math.log(2) * sum(len(d.encode("utf-8")) for d in docs))
    n = len(stream)
    assert ttq.bits_per_byte(hf, tok, docs, max_length=n, stride=n) == pytest.approx(expected, rel=1e-5)
    # rolling windows shorter than the stream (each token scored once, with less context): the arms agree exactly
    got_hf, got_ours = (ttq.bits_per_byte(m, tok, docs, max_length=32, stride=16) for m in (hf, ours))
    assert got_ours == pytest.approx(got_hf, rel=1e-6) and got_hf == pytest.approx(expected, rel=0.05)
    assert got_hf != pytest.approx(expected, rel=1e-6)  # (the windows did cut the context)


def test_tiny_arms_end_to_end(tmp_path, corpus_file, monkeypatch):
    """Both arms train for a few seconds with their snapshot clocks, every snapshot is scored, and the summary
    compares them (what the --tiny run does, in-process and smaller)."""
    monkeypatch.chdir(tmp_path)
    spec, heldout = tiny_spec(tmp_path, corpus_file)
    ttq.corpus(spec).prepare_data()
    # 10 s, not less: the time budget refuses a max_time that its throughput measurement (12 steps) would fill,
    # which a loaded CI machine (~0.3 s per step) reached at 4 s
    budget = 10
    ttq.run_ours(spec, tmp_path / "ours", budget_s=budget, every=budget / 2)
    ttq.run_hf(spec, tmp_path / "hf", budget_s=budget, every=budget / 2, lr=5e-5, batch_size=8)
    docs, tok = ttq.documents(heldout), ttq.corpus(spec).tokenizer
    curves = {arm: ttq.evaluate(tmp_path / arm, tok, docs, 32, 16) for arm in ("ours", "hf")}
    for curve in curves.values():
        assert curve[0]["step"] == 0 and curve[0]["elapsed_s"] == 0 and curve[-1]["final"]
        assert [r["elapsed_s"] for r in curve] == sorted(r["elapsed_s"] for r in curve)
        assert curve[-1]["step"] > curve[0]["step"] and curve[-1]["elapsed_s"] <= budget * 1.5
        assert curve[-1]["bpb"] < curve[0]["bpb"]  # trained
    assert curves["ours"][0]["bpb"] == pytest.approx(curves["hf"][0]["bpb"], abs=0.3)  # both start from init
    out = ttq.summary(curves)
    assert out["hf_final_bpb"] == curves["hf"][-1]["bpb"]
    assert json.loads((tmp_path / "ours" / "snapshots" / "snapshots.json").read_text())[-1]["final"]
