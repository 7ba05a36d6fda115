"""Reference strategies (``strategies.py``) and the stored reference log-probs (``cache.py``)."""
from __future__ import annotations

from modalities.base import needs_donor

from ..sequences import SEQUENCES
from .cache import StaleCache
from .strategies import (
    AdapterDisabled,
    FrozenCopy,
    PrecomputedReference,
    Reference,
    SyncReference,
)

STRATEGIES = ("frozen_copy", "adapter_disabled", "precomputed", "none")

__all__ = ["STRATEGIES", "AdapterDisabled", "FrozenCopy", "PrecomputedReference", "Reference", "StaleCache",
           "SyncReference", "build_reference"]


def check_precomputable(sequences: list[str], negatives: dict, adapters) -> None:
    """Only values that depend on the sample alone can be stored per sample."""
    for seq in sequences:
        if SEQUENCES[seq].listwise:
            raise ValueError(f"model.reference=precomputed cannot store reference log-probs of {seq!r} (all K "
                             "responses of a ranked sample, a list whose length varies per sample): the cache holds "
                             "one value per sequence name; use frozen_copy or adapter_disabled for listwise terms "
                             "(plackett_luce, multi_negative, pairwise_expansion), or a pair term, which trains on "
                             "each sample's best vs worst response and can be precomputed")
        if not SEQUENCES[seq].precomputable:
            raise ValueError(f"model.reference=precomputed cannot store reference log-probs of {seq!r}: its value "
                             "depends on the rest of the batch (KTO's KL baseline pairs each prompt with another "
                             "sample's completion); use frozen_copy or adapter_disabled")
    if any(SEQUENCES[s].corrupted_media for s in sequences):
        donors = [f"{m}.{op}" for m, ops in negatives.items() for op, _, _ in ops
                  if needs_donor(adapters[m].operators[op])]
        if donors:
            raise ValueError(f"model.reference=precomputed cannot store the conditional rows' reference log-probs "
                             f"under model.negatives {donors}: those operators take their donor from the batch; "
                             f"use operators that need no donor, or frozen_copy / adapter_disabled")


def build_reference(strategy: str, policy, cache: str | None = None, sequences: list[str] = (),
                    torch_dtype: str = "float32", negatives: dict | None = None,
                    sync: dict | None = None) -> Reference:
    """``sync``: ``model.reference_sync`` (TR-DPO), for ``frozen_copy`` only."""
    if sync is not None and strategy != "frozen_copy":
        why = {"none": "no loss term needs a reference model",
               "adapter_disabled": "the LoRA reference is the base model with LoRA switched off, which has no "
                                   "weights of its own to move (set model.reference: frozen_copy)",
               "precomputed": "stored log-probs cannot follow the policy"}.get(strategy, strategy)
        raise ValueError(f"model.reference_sync updates a frozen copy of the policy, but model.reference is "
                         f"{strategy}: {why}")
    if strategy == "precomputed":
        if not cache:
            raise ValueError("model.reference=precomputed needs model.reference_cache: the directory written by "
                             "`python -m anyalign precompute`")
        check_precomputable(list(sequences), negatives or {}, policy.adapters)
        return PrecomputedReference(policy, cache, list(sequences), torch_dtype)
    if strategy == "frozen_copy":
        return FrozenCopy(policy, list(sequences), sync)
    if strategy == "adapter_disabled":
        return AdapterDisabled(policy, list(sequences))
    if strategy == "none":
        return Reference()
    raise ValueError(f"model.reference={strategy!r} is not a known strategy; known: {STRATEGIES}")
