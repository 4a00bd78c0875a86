"""``bench`` on a lent GPU machine, with two settings a GPU wants (used by ``gpu_sweep.sh``).

    python benchmarks/gpu_launch.py sweep plans/x.toml --results-dir R ...   # same arguments as ``bench``

1. Full fp32 arithmetic: torch lets cuDNN convolutions (and, where set, matrix products) run in TF32
   on Ampere and later GPUs, about 3 significant digits fewer than the fp32 the CPU rows were
   computed and verified in. Both are switched off here so a GPU result differs from a CPU one only
   by its random draws and summation order.
2. ``CHECK_BLOCK=N`` (environment): the samples per resumable block of a budget check
   (``harness.engine.saturation.CHECK_BLOCK``, 10, sized for a CPU core, where a block's time grows
   with its samples). On a GPU an inference-time-optimising defense is bound by its kernel launches,
   so a block of 28 samples takes about as long as one of 14: a larger block finishes a restart of
   the check in one block instead of several. A restart already begun keeps the blocks it began with
   (its saved ``pool_blocks``); restarts packed afterwards use the new size.
"""

from __future__ import annotations

import os
import sys

import torch

torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False

if os.environ.get("CHECK_BLOCK"):
    from harness.engine import saturation

    block = int(os.environ["CHECK_BLOCK"])
    if block < 1:
        sys.exit(f"gpu_launch.py: CHECK_BLOCK must be a positive integer, got {block}")
    saturation.CHECK_BLOCK = block

from harness.cli import main  # noqa: E402  (after the settings above)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
