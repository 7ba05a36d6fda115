"""Reference strategies: where ``reference_*`` log-probs come from.

- ``frozen_copy``: a frozen deep copy of the initial policy (full fine-tuning). It is kept out of the
  module's registered children so it is neither checkpointed nor wrapped by DDP/FSDP; it follows the
  policy's device.
- ``none``: reference-free losses only; no second model is built.
"""
from __future__ import annotations

import copy

import torch

from .logprobs import SeqLogps
from .model import MultimodalLM

STRATEGIES = ("frozen_copy", "none")


class FrozenCopy:
    def __init__(self, policy: MultimodalLM):
        self.model = copy.deepcopy(policy).eval().requires_grad_(False)

    def to(self, device: torch.device) -> "FrozenCopy":
        self.model.to(device)
        return self

    @torch.no_grad()
    def __call__(self, batch: dict) -> SeqLogps:
        return self.model(batch)


def build_reference(strategy: str, policy: MultimodalLM):
    if strategy == "frozen_copy":
        return FrozenCopy(policy)
    if strategy == "none":
        return None
    raise ValueError(f"model.reference={strategy!r} is not a known strategy; known: {STRATEGIES}")
