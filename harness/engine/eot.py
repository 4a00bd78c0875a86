"""Expectation over Transformation (Athalye et al. 2018): the one place EOT lives.

:class:`EOTModel` turns a Defense into a plain ``nn.Module`` for attack libraries. For a randomized
defense with ``draws > 1`` its forward calls ``Defense.predict_draws`` (by default the batch
repeated ``draws`` times through one ``predict`` call; ABS/E-ABS share the candidate matching
across draws) and averages the scores; the gradient of that average is the EOT gradient estimate. For a
deterministic defense it is just ``predict``.
"""

from __future__ import annotations

import torch
from torch import nn


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
        if self.draws == 1:
            return self.defense.predict(x, generator=self.generator)
        return self.defense.predict_draws(x, draws=self.draws, generator=self.generator).mean(0)
