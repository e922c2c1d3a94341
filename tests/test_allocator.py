"""engine.allocator: the process keeps freed memory (glibc's trim / mmap thresholds) once
sampling has started, so a sampling step reuses pages instead of faulting in fresh ones."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PROBE = r"""
import ctypes, ctypes.util, torch
from engine.allocator import freed_memory_kept, keep_freed_memory
from engine.diffusion import DiffusionConfig, create_diffusion
from engine.columns import unguided
from engine.nets import UNetModel
from engine.sampler import sample

before = freed_memory_kept()
net = UNetModel(image_size=8, in_channels=1, model_channels=32, out_channels=2, num_res_blocks=1,
                attention_resolutions=(), channel_mult=(1,)).eval()
sample(net, create_diffusion(DiffusionConfig(timestep_respacing="2")), [unguided()], [0], seeds=[0])

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
libc.mallinfo2.restype = MallInfo2
block = torch.empty(20 << 18)  # 20 MiB
block.fill_(1.0)
mapped_while_alive = libc.mallinfo2().hblkhd
del block
print(before, freed_memory_kept(), mapped_while_alive >= 20 << 20, libc.mallinfo2().fordblks >= 20 << 20)
"""


def _probe(switch: str) -> list[str]:
    env = {**os.environ, "RCG_KEEP_FREED_MEMORY": switch, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_sampling_keeps_freed_memory_in_the_process():
    """After the first sample() call a freed 20 MiB block stays in the process's heap
    (it is reused by the next step); with RCG_KEEP_FREED_MEMORY=0 glibc's defaults stay:
    the block is mapped on its own and handed back to the kernel when freed."""
    before, kept, mapped, retained = _probe("1")
    assert (before, kept, mapped, retained) == ("False", "True", "False", "True")
    before, kept, mapped, retained = _probe("0")
    assert (before, kept, mapped, retained) == ("False", "False", "True", "False")
