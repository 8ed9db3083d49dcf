"""Distillation: the triple loss by hand, the teacher frozen and outside optimizer/checkpoint/export, the student
initialised from alternate teacher layers, a CLI run that learns and exports, and refused teachers."""

import math
import os

import pytest
import torch
from conftest import ENGLISH, FAST, REPO, cli, minilm_dir, only_run_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoModelForMaskedLM, AutoTokenizer, BertConfig, BertForMaskedLM, BertTokenizer

from lightning_pretrain.architecture import transformer_blocks
from lightning_pretrain.data.contract import DataContract
from lightning_pretrain.errors import InputError
from lightning_pretrain.objectives.distillation import Distillation, distillation_loss, every_other_layer

TINY = dict(
    hidden_size=32,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=32,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)


def test_loss_matches_hand_computation():
    s_logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    t_logits = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    s_hidden = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    t_hidden = torch.tensor([[[0.0, 1.0], [2.0, 2.0]]])
    alpha, beta, gamma, T, hard = 5.0, 2.0, 1.0, 2.0, torch.tensor(0.7)

    def softmax(row):
        e = [math.exp(x / T) for x in row]
        return [x / sum(e) for x in e]

    kl = (
        sum(
            sum(p * math.log(p / q) for p, q in zip(softmax(t), softmax(s)))
            for s, t in zip(s_logits.tolist(), t_logits.tolist())
        )
        / 2
        * T
        * T
    )
    cos = ((1 - 0.0) + (1 - 1.0)) / 2  # orthogonal, then parallel
    parts = distillation_loss(s_logits, t_logits, s_hidden, t_hidden, hard, alpha, beta, gamma, T)
    assert parts["kl"].item() == pytest.approx(kl, rel=1e-6)
    assert parts["cos"].item() == pytest.approx(cos, abs=1e-6)
    assert parts["loss"].item() == pytest.approx(alpha * kl + beta * 0.7 + gamma * cos, rel=1e-6)
    assert set(distillation_loss(None, None, s_hidden, t_hidden, hard, 0, 1, 0, T)) == {"loss", "hard"}


def save_teacher(path, layers=4, vocab=64, seed=0):
    """A BERT masked LM saved with its (trained-head) weights and a tokenizer of `vocab` tokens."""
    torch.manual_seed(seed)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(vocab - 5)]
    tok = BertTokenizer(vocab={w: i for i, w in enumerate(words)})
    BertForMaskedLM(BertConfig(vocab_size=vocab, num_hidden_layers=layers, **TINY)).save_pretrained(path)
    tok.save_pretrained(path)
    return tok


def student(teacher_dir, tok, layers=2, **kwargs):
    return Distillation(
        teacher=str(teacher_dir),
        model=BertConfig(num_hidden_layers=layers, **TINY),
        data=DataContract(tokenizer=tok, seq_len=16),
        warmup_steps=1,
        **kwargs,
    )


def test_student_from_alternate_teacher_layers(tmp_path):
    tok = save_teacher(tmp_path / "t", layers=4)
    teacher = BertForMaskedLM.from_pretrained(tmp_path / "t")
    assert every_other_layer(4) == [1, 3] and every_other_layer(6) == [1, 3, 5] and every_other_layer(5) == [0, 2, 4]
    for init, layers in ((True, [1, 3]), ([0, 2], [0, 2])):
        module = student(tmp_path / "t", tok, init_from_teacher=init)
        for s_block, i in zip(transformer_blocks(module.model), layers):
            t_state = transformer_blocks(teacher)[i].state_dict()
            assert all(torch.equal(v, t_state[k]) for k, v in s_block.state_dict().items())
        t_state = teacher.state_dict()
        for k, v in module.model.state_dict().items():
            if ".layer." not in k:  # embeddings and the MLM head by name
                assert torch.equal(v, t_state[k]), k
    scratch = student(tmp_path / "t", tok)
    assert not torch.equal(
        scratch.model.bert.encoder.layer[0].attention.self.query.weight,
        teacher.bert.encoder.layer[1].attention.self.query.weight,
    )
    with pytest.raises(InputError, match="one teacher layer index"):
        student(tmp_path / "t", tok, init_from_teacher=[0, 9])
    with pytest.raises(InputError, match="no teacher counterpart of that shape"):
        Distillation(
            teacher=str(tmp_path / "t"),
            model=BertConfig(num_hidden_layers=2, **{**TINY, "hidden_size": 64}),
            data=DataContract(tokenizer=tok, seq_len=16),
            init_from_teacher=True,
            gamma=0,
        )


def test_teacher_frozen_and_absent_from_optimizer_checkpoint_and_export(tmp_path):
    import lightning as L

    tok = save_teacher(tmp_path / "t")
    module = student(tmp_path / "t", tok, init_from_teacher=True)
    teacher = module.teacher
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = module.model.bert.encoder.layer[0].output.dense.weight.clone()
    blocks = torch.randint(5, 64, (48, 16))
    loader = torch.utils.data.DataLoader(blocks, batch_size=8)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, loader)
    assert not teacher.training and all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())  # bit-identical
    assert not torch.equal(module.model.bert.encoder.layer[0].output.dense.weight, student_before)  # student learnt
    in_optimizer = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for p in module.model.parameters()}
    assert not in_optimizer & {id(p) for p in teacher.parameters()}

    trainer.save_checkpoint(tmp_path / "c.ckpt")
    ckpt = torch.load(tmp_path / "c.ckpt", weights_only=True)
    assert set(ckpt["state_dict"]) == {f"model.{k}" for k in module.model.state_dict()}
    fresh = student(tmp_path / "t", tok)
    fresh.load_state_dict(ckpt["state_dict"])  # strict: nothing missing, nothing extra
    assert torch.equal(
        fresh.model.bert.encoder.layer[0].output.dense.weight, module.model.bert.encoder.layer[0].output.dense.weight
    )

    module.export_hf(tmp_path / "hf")
    exported = AutoModelForMaskedLM.from_pretrained(tmp_path / "hf")
    assert exported.config.num_hidden_layers == 2  # the student, not the teacher
    module.to(torch.float64)  # the teacher follows the module's dtype (true-precision plugins cast this way)
    assert next(teacher.parameters()).dtype == torch.float64


def test_teacher_without_trained_head_refuses_soft_targets(tmp_path):
    """A sentence encoder (BertModel) loads as a masked LM with a random head: KL is refused, hidden states work."""
    tok = save_teacher(tmp_path / "t")
    BertForMaskedLM.from_pretrained(tmp_path / "t").bert.save_pretrained(tmp_path / "encoder")  # no MLM head
    tok.save_pretrained(tmp_path / "encoder")
    with pytest.raises(InputError, match="no trained LM head"):
        student(tmp_path / "encoder", tok, alpha=5.0)
    module = student(tmp_path / "encoder", tok, alpha=0.0, init_from_teacher=True)
    assert not module.teacher_head_trained
    module.log = module.log_dict = lambda *args, **kwargs: None  # no trainer to log to
    loss = module.training_loss(torch.randint(5, 64, (2, 16)), 0)
    assert torch.isfinite(loss) and loss.requires_grad


def test_tokenizer_mismatch_and_hidden_size_mismatch_refused(tmp_path):
    tok = save_teacher(tmp_path / "t", vocab=64)
    other = save_teacher(tmp_path / "o", vocab=80)
    with pytest.raises(InputError, match="different tokenizers"):
        student(tmp_path / "t", other)
    with pytest.raises(InputError, match="equal hidden sizes"):
        Distillation(
            teacher=str(tmp_path / "t"),
            model=BertConfig(num_hidden_layers=1, **{**TINY, "hidden_size": 64}),
            data=DataContract(tokenizer=tok, seq_len=16),
        )


def test_minilm_student_from_alternate_layers():
    path = minilm_dir()
    tok = AutoTokenizer.from_pretrained(path)
    contract = DataContract(tokenizer=tok, seq_len=32)
    config = BertConfig(hidden_size=384, num_hidden_layers=3, num_attention_heads=12, intermediate_size=1536)
    with pytest.raises(InputError, match="no trained LM head"):
        Distillation(teacher=str(path), model=config, data=contract)
    module = Distillation(teacher=str(path), model=config, data=contract, alpha=0.0, init_from_teacher=True)
    teacher = module.teacher
    for s, t in zip(module.model.bert.encoder.layer, [teacher.bert.encoder.layer[i] for i in (1, 3, 5)]):
        assert torch.equal(s.output.dense.weight, t.output.dense.weight)


def test_student_equal_to_teacher_has_zero_kl_and_cos_and_the_hf_hard_loss(tmp_path):
    """A student built from all the teacher's layers is the teacher: KL and cosine vanish, the hard loss is HF's own
    (MLM at the masked positions; CLM next-token with CausalDistillation, GPT-2)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from lightning_pretrain.objectives import CausalDistillation

    tok = save_teacher(tmp_path / "t", layers=2)
    GPT2LMHeadModel(GPT2Config(vocab_size=64, n_layer=2, n_embd=32, n_head=2, n_positions=32)).save_pretrained(
        tmp_path / "g"
    )
    tok.save_pretrained(tmp_path / "g")
    batch = torch.randint(5, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    contract = DataContract(tokenizer=tok, seq_len=16)
    mlm = student(tmp_path / "t", tok, init_from_teacher=[0, 1])
    clm = CausalDistillation(
        teacher=str(tmp_path / "g"),
        model=GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=32),
        data=contract,
        init_from_teacher=[0, 1],
    )
    for module in (mlm, clm):
        module.eval()  # no dropout: the student computes exactly what the teacher does
        logged = {}
        module.log = lambda name, value, logged=logged, **_: logged.update({name: value})
        module.log_dict = lambda values, logged=logged, **_: logged.update(values)
        loss = module.training_loss(batch, 0)
        assert logged["train/kl_loss"].item() == pytest.approx(0, abs=1e-5)
        assert logged["train/cos_loss"].item() == pytest.approx(0, abs=1e-5)
        if module is mlm:
            inputs, labels = mlm.corrupt(batch, 0, 0)
            hf = mlm.teacher(input_ids=inputs, labels=labels).loss
        else:
            hf = clm.teacher(input_ids=batch, labels=batch).loss
        assert logged["train/hard_loss"].item() == pytest.approx(hf.item(), rel=1e-5)
        assert loss.item() == pytest.approx(2.0 * hf.item(), rel=1e-4)  # beta 2, the rest 0


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """A tiny BERT teacher: the export of a few-step MaskedLM run, and the corpus it was trained on."""
    root = tmp_path_factory.mktemp("teacher")
    corpus = root / "corpus.txt"
    corpus.write_text(
        "\n\n".join(f"{ENGLISH[i % len(ENGLISH)]} Paragraph {i} adds {i * 7 % 13} words." for i in range(400)) + "\n"
    )
    cwd = os.getcwd()
    os.chdir(root)
    try:
        cli(
            "fit",
            "-c",
            str(REPO / "configs/pretrain/mlm_tiny.yaml"),
            *FAST,
            "--data.source",
            str(corpus),
            "--data.vocab_size",
            "500",
        )
    finally:
        os.chdir(cwd)
    return only_run_dir(root, "mlm_tiny") / "hf", corpus


def distil_args(teacher, corpus, *extra):
    return [
        "fit",
        "-c",
        str(REPO / "configs/pretrain/distil_minilm.yaml"),
        *FAST,
        "--trainer.max_steps",
        "8",
        "--data.source",
        str(corpus),
        "--model.init_args.teacher",
        str(teacher),
        "--model.init_args.alpha",
        "5",
        "--model.init_args.beta",
        "2",
        "--model.init_args.optimizer.init_args.lr",
        "2e-3",
        *[
            a
            for k, v in {
                "hidden_size": 128,
                "num_attention_heads": 4,
                "intermediate_size": 512,
                "max_position_embeddings": 128,
                "num_hidden_layers": 1,
            }.items()
            for a in (f"--model.init_args.model.init_args.{k}", str(v))
        ],
        *extra,
    ]


def test_distil_cli_learns_and_exports(workdir, teacher_run):
    teacher, corpus = teacher_run
    cli(*distil_args(teacher, corpus, "--data.tokenizer", str(teacher)))
    run_dir = only_run_dir(workdir, "distil_minilm")
    events = EventAccumulator(str(run_dir)).Reload()
    assert {"train/kl_loss", "train/hard_loss", "train/cos_loss", "val/loss"} <= set(events.Tags()["scalars"])
    losses = [e.value for e in events.Scalars("train/loss")]
    assert len(losses) == 8 and losses[-1] < losses[0], losses
    model = AutoModelForMaskedLM.from_pretrained(run_dir / "hf")
    assert model.config.num_hidden_layers == 1  # the student, initialised from the teacher's top layer
    assert len(AutoTokenizer.from_pretrained(run_dir / "hf")) == len(AutoTokenizer.from_pretrained(teacher))


def test_distil_cli_tokenizer_mismatch_is_an_error(workdir, teacher_run, capsys):
    teacher, corpus = teacher_run
    with pytest.raises(SystemExit) as exit_info:
        cli(*distil_args(teacher, corpus, "--data.tokenizer", "bpe", "--data.vocab_size", "500"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "different tokenizers" in err[-1], err[-1]
