"""Test-local rewards, importable by class_path (``online_rewards.Recorder``) from a config."""
from __future__ import annotations

import torch

CALLS: list[dict] = []


class Recorder:
    """Rewards shorter responses (fewer characters), and records what it saw: the key, the K responses and a
    fingerprint of the policy's weights at the time of the call."""

    def __init__(self, fail_key: str | None = None):
        self.fail_key, self.policy = fail_key, None

    def bind(self, policy) -> None:
        self.policy = policy

    def __call__(self, sample: dict, responses: list[str]) -> list[float]:
        if sample["key"] == self.fail_key:
            raise RuntimeError(f"cannot score {sample['key']}")
        with torch.no_grad():
            fingerprint = float(sum(p.double().sum() for p in self.policy.parameters() if p.requires_grad))
        CALLS.append({"key": sample["key"], "responses": list(responses), "fingerprint": fingerprint,
                      "answer": sample.get("answer"), "prompt": sample["prompt"]})
        return [-float(len(r)) for r in responses]


class TiesOnRankOne:
    """Under DDP: rank 1's samples all tie (nothing to train there), rank 0's reward shorter responses."""

    def __call__(self, sample: dict, responses: list[str]) -> list[float]:
        import torch.distributed as dist
        if dist.is_initialized() and dist.get_rank() == 1:
            return [0.0] * len(responses)
        return [-float(len(r)) for r in responses]
