"""Reference strategies: where ``reference_*`` log-probs come from.

- ``frozen_copy``: a frozen deep copy of the initial policy (full fine-tuning). It is kept out of the
  module's registered children so it is neither checkpointed nor wrapped by DDP/FSDP; it follows the
  policy's device.
- ``adapter_disabled``: for LoRA policies: the same weights with the LoRA adapters switched off and the
  modality adapters' trainable tensors (projectors) at their initial values, applied with
  ``functional_call`` from a snapshot of those tensors only. No second copy of the LM or encoders.
- ``none``: reference-free losses only; no second model is built.
"""
from __future__ import annotations

import copy

import torch
from torch.func import functional_call

from .logprobs import SeqLogps
from .model import MultimodalLM

STRATEGIES = ("frozen_copy", "adapter_disabled", "none")


class FrozenCopy:
    def __init__(self, policy: MultimodalLM):
        self.model = copy.deepcopy(policy).eval().requires_grad_(False)

    def to(self, device: torch.device) -> "FrozenCopy":
        self.model.to(device)
        return self

    @torch.no_grad()
    def __call__(self, batch: dict) -> SeqLogps:
        return self.model(batch)


class AdapterDisabled:
    def __init__(self, policy: MultimodalLM):
        if not hasattr(policy.lm, "disable_adapter"):
            raise ValueError("model.reference=adapter_disabled needs a LoRA policy: set model.lora")
        self.policy = policy
        self.initial = {f"adapters.{n}": p.detach().clone() for n, p in policy.adapters.named_parameters()
                        if p.requires_grad}

    def to(self, device: torch.device) -> "AdapterDisabled":
        self.initial = {k: v.to(device) for k, v in self.initial.items()}
        return self

    @torch.no_grad()
    def __call__(self, batch: dict) -> SeqLogps:
        was_training = self.policy.training
        self.policy.eval()  # the reference is deterministic: no dropout
        try:
            with self.policy.lm.disable_adapter():
                return functional_call(self.policy, self.initial, (batch,), strict=False)
        finally:
            self.policy.train(was_training)


def build_reference(strategy: str, policy: MultimodalLM):
    if strategy == "frozen_copy":
        return FrozenCopy(policy)
    if strategy == "adapter_disabled":
        return AdapterDisabled(policy)
    if strategy == "none":
        return None
    raise ValueError(f"model.reference={strategy!r} is not a known strategy; known: {STRATEGIES}")
