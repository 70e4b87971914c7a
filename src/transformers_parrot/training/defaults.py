"""Training defaults the configs and the recipes share (no TRL import): the paper's learning rate per stage and
whether bf16 is the default precision."""

from __future__ import annotations

import torch

# paper §3 (and the release scripts): learning rate per stage
STAGE_LEARNING_RATE = {1: 1e-3, 2: 2e-5}


def bf16_available() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
