"""The CLI's allocator setting makes repeated large CPU tensors reuse memory instead of faulting in new pages."""

import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch
from lightning_pretrain.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "tuned" else False
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    t = torch.empty(16 * 2**20)  # 64 MB, like the logits of one small-model step
    t.fill_(1.0)
    del t
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc malloc settings exist on Linux only")
def test_tuned_allocator_reuses_large_blocks():
    def faults(mode):
        out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
        applied, n = out.stdout.split()
        return applied == "True", int(n)

    applied, tuned = faults("tuned")
    if not applied:
        pytest.skip("not a glibc system")
    _, default = faults("default")
    # default: every 64 MB tensor faults in 16k fresh pages; tuned: the first one does, the rest reuse it
    assert default > 10 * 16_000 and tuned < 3 * 16_000, (default, tuned)
