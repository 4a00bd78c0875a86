"""Expectation over Transformation (Athalye et al. 2018): the one place EOT lives.

:class:`EOTModel` turns a Defense into a plain ``nn.Module`` for attack libraries. For a randomized
defense with ``draws > 1`` its forward calls ``Defense.predict_draws`` (by default the batch
repeated ``draws`` times through one ``predict`` call; ABS/E-ABS share the candidate matching
across draws) and averages the scores; the gradient of that average is the EOT gradient estimate. For a
deterministic defense it is just ``predict``.
"""

from __future__ import annotations

import contextlib
import time

import torch
from torch import nn

#: the default interval of :func:`between_forwards`, seconds
TICK_EVERY_S = 30.0
#: called (at most every ``_every_s`` seconds) before each forward of any :class:`EOTModel`;
#: set by :func:`between_forwards` (``bench sweep --threads auto`` fits its torch threads there)
_tick = None
_every_s = TICK_EVERY_S
_last_tick = 0.0


@contextlib.contextmanager
def between_forwards(fn, *, every_s: float | None = None):
    """Call ``fn()`` before an :class:`EOTModel` forward when ``every_s`` (default
    :data:`TICK_EVERY_S`) seconds have passed since the last call, while the block runs. ``bench sweep --threads auto`` fits its torch threads there
    (:func:`harness.orchestration.sweep.fit_threads`): a process that started alone on all the cores
    gives one back to a second sweep process within half a minute of its start, not at its next job
    (one E-ABS job is 20-80 min; 2 + 1 threads on 2 cores ran a PGD block 1.75x slower, stop 44)."""
    global _tick, _every_s, _last_tick
    before = (_tick, _every_s, _last_tick)
    _tick, _every_s, _last_tick = fn, float(TICK_EVERY_S if every_s is None else every_s), time.monotonic()
    try:
        yield
    finally:
        _tick, _every_s, _last_tick = before


def _maybe_tick() -> None:
    global _last_tick
    if _tick is None:
        return
    now = time.monotonic()
    if now - _last_tick >= _every_s:
        _last_tick = now
        _tick()


class EOTModel(nn.Module):
    """``forward(x) = mean_{d < draws} defense.predict(x; fresh randomness)``."""

    def __init__(self, defense, *, draws: int = 1, generator: torch.Generator | None = None):
        super().__init__()
        if draws < 1:
            raise ValueError(f"EOT draws must be >= 1, got {draws}")
        self.defense = defense
        self.draws = int(draws) if defense.randomized else 1
        self.generator = generator
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from harness.engine.verify import check_inputs

        check_inputs(self.defense, x)
        _maybe_tick()
        if self.draws == 1:
            return self.defense.predict(x, generator=self.generator)
        return self.defense.predict_draws(x, draws=self.draws, generator=self.generator).mean(0)
