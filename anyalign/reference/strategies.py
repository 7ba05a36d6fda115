"""Reference strategies: where ``reference_*`` log-probs come from.

- ``frozen_copy``: a frozen deep copy of the initial policy (full fine-tuning). It is kept out of the
  module's registered children so it is neither checkpointed nor wrapped by DDP/FSDP; it follows the
  policy's device.
- ``adapter_disabled``: for LoRA policies: the same weights with the LoRA adapters switched off and the
  modality adapters' trainable tensors (projectors) at their initial values, applied with
  ``functional_call`` from a snapshot of those tensors only. No second copy of the LM or encoders.
- ``precomputed``: log-probs computed once before training by ``python -m anyalign precompute`` and read
  next to each sample by the data workers (``anyalign/precompute.py``); no reference model in memory.
- ``none``: reference-free losses only; no second model is built.
"""
from __future__ import annotations

import copy

import torch
from torch.func import functional_call

from .logprobs import SeqLogps
from .model import MultimodalLM
from .precompute import ReferenceCache, StaleCache, model_fingerprint, template_fingerprint

STRATEGIES = ("frozen_copy", "adapter_disabled", "precomputed", "none")


class FrozenCopy:
    def __init__(self, policy: MultimodalLM):
        self.model = copy.deepcopy(policy).eval().requires_grad_(False)

    def to(self, device: torch.device) -> "FrozenCopy":
        self.model.to(device)
        return self

    def share_frozen_encoders(self, policy: MultimodalLM) -> list[str]:
        """Point the copy's frozen encoder sides at the policy's own modules, which never change, instead of
        holding a second copy of them (a vision or audio tower is often the largest frozen part). Only
        where parameters are not sharded: FSDP and DeepSpeed rewrite the policy's modules in place.
        Returns the modalities shared."""
        shared = []
        for name, adapter in policy.adapters.items():
            if not (adapter.shares_features() and adapter.encoder_frozen()):
                continue
            copy_ = self.model.adapters[name]
            for child, module in adapter.named_children():
                if child != "projector":
                    setattr(copy_, child, module)
            shared.append(name)
        return shared

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


class PrecomputedReference:
    """Reference values carried by the batch (``reference_logps``/``reference_tokens``, one per sequence),
    looked up by the data workers in the cache. Holds fingerprints of the initial policy, no model."""

    def __init__(self, policy: MultimodalLM, cache: str, sequences: list[str], torch_dtype: str):
        self.sequences = sorted(sequences)
        self.model_fp = model_fingerprint(policy, torch_dtype)
        self.template_fp = template_fingerprint(policy)
        self.cache = ReferenceCache(cache, "")
        self.manifest: dict | None = None

    def check(self, data_fp: dict) -> None:
        """Refuse a cache made for another model, template or data settings; keep its manifest."""
        manifest = self.cache.load_manifest()
        missing = sorted(set(self.sequences) - set(manifest["sequences"]))
        if missing:
            raise StaleCache(f"reference cache {self.cache.path} holds {manifest['sequences']}, but the loss terms "
                             f"need reference log-probs of {missing}; recompute it with this run's config")
        stored = manifest["fingerprint"]
        run = {"model": self.model_fp, "template": self.template_fp, "data": data_fp}
        for part in ("model", "template", "data"):
            if stored.get(part) != run[part]:
                if part == "data":
                    diff = sorted(k for k in set(stored["data"]) | set(data_fp) if stored["data"].get(k) != data_fp.get(k))
                    what = f"data settings {diff} differ (cache {[stored['data'].get(k) for k in diff]}, " \
                           f"this run {[data_fp.get(k) for k in diff]})"
                else:
                    what = (f"the {part} differs (cache {stored.get(part, '?')[:12]}, this run {run[part][:12]}"
                            + ("; the initial policy's weights, LM dtype or adapter settings changed, or the seed"
                               if part == "model" else "; chat template or tokenizer changed") + ")")
                raise StaleCache(f"reference cache {self.cache.path} was computed for another run: {what}; recompute "
                                 f"it with `python -m anyalign precompute` and this run's config")
        self.cache.fingerprint = stored["all"]
        self.manifest = manifest

    def to(self, device: torch.device) -> "PrecomputedReference":
        return self

    def __call__(self, batch: dict) -> SeqLogps:
        if "reference_logps" not in batch:
            raise RuntimeError("model.reference=precomputed, but the batch carries no reference log-probs: use "
                               "anyalign's PreferenceDataModule, bound to this module")
        return SeqLogps(batch["reference_logps"], batch["reference_tokens"])


def build_reference(strategy: str, policy: MultimodalLM, cache: str | None = None, sequences: list[str] = (),
                    torch_dtype: str = "float32"):
    if strategy == "precomputed":
        if not cache:
            raise ValueError("model.reference=precomputed needs model.reference_cache: the directory written by "
                             "`python -m anyalign precompute`")
        return PrecomputedReference(policy, cache, list(sequences), torch_dtype)
    if strategy == "frozen_copy":
        return FrozenCopy(policy)
    if strategy == "adapter_disabled":
        return AdapterDisabled(policy)
    if strategy == "none":
        return None
    raise ValueError(f"model.reference={strategy!r} is not a known strategy; known: {STRATEGIES}")
