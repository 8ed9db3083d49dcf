"""Where a CPU training step's time goes: torch.profiler over our module's step (loss, backward, fused AdamW) at the
peer benchmark's shape, self CPU time grouped into matmuls, attention, element-wise work, the optimizer and the rest.

It bounds what fusion can buy: `torch.compile` can remove element-wise passes, not matmul time.
    python benchmarks/step_profile.py --objective clm --steps 3            # eager
    python benchmarks/step_profile.py --objective clm --steps 3 --compile  # blocks compiled, as --compile.enabled
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from peer_hf_trainer import adamw, our_module, shapes  # noqa: E402
from torch.profiler import profile  # noqa: E402

from lightning_pretrain import parallel  # noqa: E402
from lightning_pretrain.allocator import keep_freed_memory  # noqa: E402
from lightning_pretrain.data import PretrainCorpus  # noqa: E402

GROUPS = {  # aten op -> category (self time); anything else is "other"
    "matmul": ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear"),
    "attention": (
        "aten::_scaled_dot_product_flash_attention_for_cpu",
        "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
    ),
    "element-wise": (
        "aten::mul",
        "aten::add",
        "aten::add_",
        "aten::pow",
        "aten::tanh",
        "aten::tanh_backward",
        "aten::gelu",
        "aten::gelu_backward",
        "aten::native_layer_norm",
        "aten::native_layer_norm_backward",
        "aten::sub",
        "aten::div",
        "aten::exp",
        "aten::exp_",
        "aten::sub_",
        "aten::mul_",
        "aten::div_",
        "aten::where",
        "aten::copy_",
        "aten::sum",
        "aten::fill_",
        "aten::zero_",
        "aten::masked_fill",
        "aten::logsumexp",
        "aten::scatter_add_",
        "aten::gather",
        "aten::embedding_dense_backward",
        "aten::index_select",
        "aten::clone",
    ),
    "optimizer": ("aten::_fused_adamw_",),
    "compiled kernels": ("CompiledFunction", "CompiledFunctionBackward", "Torch-Compiled Region"),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--objective", choices=["clm", "mlm"], default="clm")
    p.add_argument("--steps", type=int, default=3, help="profiled steps (after 2 warm-up steps)")
    p.add_argument("--compile", action="store_true", help="compile the transformer blocks first")
    p.add_argument("--top", type=int, default=12)
    args = p.parse_args()
    keep_freed_memory()
    config = shapes(False)[args.objective]
    dm = PretrainCorpus(
        tokenizer="bpe" if args.objective == "clm" else "wordpiece", vocab_size=16384, seq_len=128, batch_size=32
    )
    dm.prepare_data()
    dm.setup("fit")
    module = our_module(args.objective, config, dm)
    if args.compile:
        parallel.parallelize(module.model, compile=parallel.Compile(enabled=True))
    opt = adamw([q for q in module.parameters() if q.requires_grad])
    batches = iter(dm.train_dataloader())

    def step(i: int) -> None:
        module.training_step(next(batches), i).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    warnings.filterwarnings("ignore", message=".*self.log.*")
    for i in range(2):
        step(i)
    with profile() as prof:
        for i in range(args.steps):
            step(2 + i)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    by_group = defaultdict(float)
    for e in events:
        group = next((g for g, names in GROUPS.items() if e.key in names), "other")
        by_group[group] += e.self_cpu_time_total
    print(
        f"{args.objective}{' compiled' if args.compile else ''}: {total / 1e6 / args.steps:.2f} s of self CPU time "
        f"per step (all threads)\n\n| category | share |\n|---|---:|"
    )
    for group, t in sorted(by_group.items(), key=lambda kv: -kv[1]):
        print(f"| {group} | {t / total:.1%} |")
    print("\n| op | share | calls/step |\n|---|---:|---:|")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.top]:
        print(f"| {e.key} | {e.self_cpu_time_total / total:.1%} | {e.count / args.steps:.0f} |")


if __name__ == "__main__":
    main()
