"""The CLI's allocator setting makes a training loop reuse its large blocks instead of faulting in new pages."""

import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch
from lightning_pretrain.allocator import keep_freed_memory
from transformers import GPT2Config, GPT2LMHeadModel
applied = keep_freed_memory() if sys.argv[1] == "tuned" else False
torch.manual_seed(0)
model = GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=2, n_positions=128, vocab_size=8192))
opt = torch.optim.AdamW(model.parameters())
x = torch.randint(0, 8192, (16, 128))  # 64 MB of logits per step, then as much again for their gradient
faults = []
for step in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    model(input_ids=x, labels=x).loss.backward(); opt.step(); opt.zero_grad()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, min(faults[4:]))  # steady state: the quietest of the last four steps
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc malloc settings exist on Linux only")
def test_tuned_allocator_stops_steady_state_page_faults():
    def faults(mode):
        out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
        applied, n = out.stdout.split()[-2:]
        return applied == "True", int(n)

    applied, tuned = faults("tuned")
    if not applied:
        pytest.skip("not a glibc system")
    _, default = faults("default")
    # counted in pages of one step's logits (64 MB = 16k pages of 4 KiB), never as a ratio of two timings: default
    # glibc hands >32 MB blocks back to the kernel on free, so every step faults at least its logits in again; tuned,
    # even the quietest steady-state step of a busy machine stays far below one such tensor
    logits_pages = 16 * 128 * 8192 * 4 // 4096
    assert default >= logits_pages, default
    assert tuned < logits_pages / 10, (default, tuned)
