"""Reference strategies: where ``reference_*`` log-probs come from. All share the ``Reference`` interface,
so callers (the module, precompute, bench) never ask which one they hold.

- ``frozen_copy``: a frozen deep copy of the initial policy (full fine-tuning). It is kept out of the
  module's registered children so it is neither checkpointed nor wrapped by DDP/FSDP; it follows the
  policy's device. With ``model.reference_sync`` (TR-DPO) it is moved towards the policy every N optimizer
  steps by ``SyncReference``, which also keeps the moved weights in the checkpoint.
- ``adapter_disabled``: for LoRA policies: the same weights with the LoRA adapters switched off and the
  modality adapters' trainable tensors (projectors) at their initial values, applied with
  ``functional_call`` from a snapshot of those tensors only. No second copy of the LM or encoders.
- ``precomputed``: log-probs computed once before training by ``python -m anyalign precompute`` and read
  next to each sample by the data workers (``cache.py``); no reference model in memory.
- ``none``: reference-free losses only (the null object: it returns no log-probs and holds nothing).
"""
from __future__ import annotations

import copy
import logging
from functools import partial
from typing import Callable

import lightning as L
import torch
from torch.func import functional_call

from ..data.pipeline import attach_reference
from ..logprobs import SeqLogps
from ..model import MultimodalLM, StepCache
from .cache import ReferenceCache, StaleCache, model_fingerprint, template_fingerprint

log = logging.getLogger("anyalign")


class Reference:
    """The interface. ``None`` strategy is this base class itself: no model, no values."""

    name = "none"
    #: runs a model forward each step (for FLOP counts)
    runs_model = False

    def __init__(self, sequences: list[str] = ()):
        self.sequences = sorted(sequences)

    def setup(self, policy: MultimodalLM, device: torch.device, share_frozen: bool = False) -> None:
        """Once the policy is on its device (``on_fit_start``, ``on_validation_start``, ...). ``share_frozen``:
        the strategy leaves the policy's modules as they are (one device, DDP), so frozen parts may be shared."""

    def __call__(self, batch: dict, cache: StepCache | None = None) -> SeqLogps | None:
        """Reference log-probs of the batch's sequences; ``cache``: the step's, shared with the policy's forward."""
        return None

    def bind_data(self, data) -> list[Callable]:
        """Check the reference against the data module's settings; -> pipeline stages the data workers add."""
        return []

    def check_batch(self, batch: dict, policy: SeqLogps) -> None:
        """Per-step consistency check of the values against the policy's forward."""

    def check_precision(self, precision: str) -> None:
        """Warn if the values were made at another ``trainer.precision``."""

    def held_tensors(self) -> list[torch.Tensor]:
        """Tensors held for the reference beside the policy's (for memory reports)."""
        return []

    def callbacks(self) -> list[L.Callback]:
        """Lightning callbacks the strategy needs during fit (the module adds them)."""
        return []


SYNC_KEYS = {"every": "optimizer steps between updates (TRL's ref_model_sync_steps, TR-DPO's τ)",
             "alpha": "weight of the policy in each update, in (0, 1]; 1 copies it (TRL's ref_model_mixup_alpha)"}


def check_sync(sync: dict) -> dict:
    """``model.reference_sync``: ``{every: N, alpha: α}``, both required; returns it normalised."""
    if not isinstance(sync, dict) or set(sync) != set(SYNC_KEYS):
        what = "; ".join(f"{k}: {v}" for k, v in SYNC_KEYS.items())
        raise ValueError(f"model.reference_sync must be {{every: N, alpha: α}} ({what}), got {sync!r}")
    every, alpha = sync["every"], sync["alpha"]
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"model.reference_sync.every must be an integer >= 1, got {every!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha <= 1:
        raise ValueError(f"model.reference_sync.alpha must be in (0, 1], got {alpha!r}")
    return {"every": every, "alpha": float(alpha)}


class FrozenCopy(Reference):
    name = "frozen_copy"
    runs_model = True

    def __init__(self, policy: MultimodalLM, sequences: list[str] = (), sync: dict | None = None):
        super().__init__(sequences)
        self.model = copy.deepcopy(policy).eval().requires_grad_(False)
        self._policy_tensors: set[int] = set()
        self.sync = check_sync(sync) if sync is not None else None
        self._unsharded = True  # until setup says otherwise

    def setup(self, policy: MultimodalLM, device: torch.device, share_frozen: bool = False) -> None:
        self.model.configure_attention(device)  # a deep copy made on CPU: its own config to resolve
        if share_frozen:
            self.share_frozen_encoders(policy)  # before .to(device): one tower on the GPU
        self.model.to(device)
        self._policy_tensors = {t.data_ptr() for t in policy.state_dict().values()}
        self._unsharded = share_frozen  # the policy's parameters are whole on this rank (one device, DDP)

    def trained_names(self, policy: MultimodalLM) -> list[str]:
        """The parameters the policy trains: the only ones a sync can change."""
        return [n for n, p in policy.named_parameters() if p.requires_grad]

    @torch.no_grad()
    def mix_from(self, policy: MultimodalLM, alpha: float) -> None:
        """TR-DPO's update, θ_ref ← α·θ + (1 - α)·θ_ref, on the parameters the policy trains (the frozen
        ones are equal in both already). α = 1 is a hard copy."""
        if not self._unsharded:
            raise RuntimeError("model.reference_sync reads the policy's parameters whole; FSDP and DeepSpeed "
                               "shard them: use a single device or DDP")
        own = dict(self.model.named_parameters(remove_duplicate=False))
        for name, p in policy.named_parameters():
            if p.requires_grad:
                own[name].lerp_(p.detach().to(own[name].dtype), alpha)

    def callbacks(self) -> list[L.Callback]:
        return [SyncReference(self, **self.sync)] if self.sync else []

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
    def __call__(self, batch: dict, cache: StepCache | None = None) -> SeqLogps:
        return self.model(batch, cache)

    def held_tensors(self) -> list[torch.Tensor]:
        return [t for t in self.model.state_dict().values() if t.data_ptr() not in self._policy_tensors]


class SyncReference(L.Callback):
    """TR-DPO (Gorbatovski et al. 2024; TRL's ``sync_ref_model``): after every ``every``-th optimizer step the
    frozen copy moves towards the policy, θ_ref ← α·θ + (1 - α)·θ_ref. The moved weights are this callback's
    state, so a checkpoint holds them and a resumed run continues with the same reference (the frozen copy
    itself is built from the initial policy and is not part of the module's state)."""

    def __init__(self, reference: FrozenCopy, every: int, alpha: float):
        self.reference, self.every, self.alpha = reference, every, alpha
        self.synced_at = 0  # the optimizer step of the last update (0: never)
        self.names: list[str] = []  # the parameters an update moves (those the policy trains)

    @property
    def state_key(self) -> str:
        return "SyncReference"

    def on_fit_start(self, trainer, pl_module) -> None:
        self.names = self.reference.trained_names(pl_module.policy)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step  # counts optimizer steps: several micro-batches may end at one step
        if step > self.synced_at and step % self.every == 0:
            self.reference.mix_from(pl_module.policy, self.alpha)
            self.synced_at = step

    def state_dict(self) -> dict:
        """The moved weights once an update has happened (before that the copy is the initial policy, which
        a resumed run rebuilds anyway)."""
        if not self.synced_at:
            return {"synced_at": 0}
        own = dict(self.reference.model.named_parameters(remove_duplicate=False))
        return {"synced_at": self.synced_at, "weights": {n: own[n].detach().clone() for n in self.names}}

    def load_state_dict(self, state: dict) -> None:
        self.synced_at = int(state.get("synced_at", 0))
        if self.synced_at:
            own = dict(self.reference.model.named_parameters(remove_duplicate=False))
            with torch.no_grad():
                for name, value in state["weights"].items():
                    own[name].copy_(value)
            self.names = list(state["weights"])


class AdapterDisabled(Reference):
    name = "adapter_disabled"
    runs_model = True

    def __init__(self, policy: MultimodalLM, sequences: list[str] = ()):
        super().__init__(sequences)
        if not hasattr(policy.lm, "disable_adapter"):
            raise ValueError("model.reference=adapter_disabled needs a LoRA policy: set model.lora")
        self.policy = policy
        # everything that trains besides the LoRA weights (adapters' projectors, a family's projector), as it
        # was at the start: the reference is the initial policy
        self.initial = {n: p.detach().clone() for n, p in policy.named_parameters()
                        if p.requires_grad and "lora_" not in n}

    def setup(self, policy: MultimodalLM, device: torch.device, share_frozen: bool = False) -> None:
        self.initial = {k: v.to(device) for k, v in self.initial.items()}

    @torch.no_grad()
    def __call__(self, batch: dict, cache: StepCache | None = None) -> SeqLogps:
        was_training = self.policy.training
        self.policy.eval()  # the reference is deterministic: no dropout
        try:
            with self.policy.lm.disable_adapter():
                return functional_call(self.policy, self.initial, (batch, cache), strict=False)
        finally:
            self.policy.train(was_training)

    def held_tensors(self) -> list[torch.Tensor]:
        return list(self.initial.values())


class PrecomputedReference(Reference):
    """Reference values carried by the batch (``reference_logps``/``reference_tokens``, one per sequence),
    looked up by the data workers in the cache. Holds fingerprints of the initial policy, no model."""

    name = "precomputed"

    def __init__(self, policy: MultimodalLM, cache: str, sequences: list[str], torch_dtype: str):
        super().__init__(sequences)
        self.model_fp = model_fingerprint(policy, torch_dtype)
        self.template_fp = template_fingerprint(policy)
        self.cache = ReferenceCache(cache, "")
        self.manifest: dict | None = None

    def bind_data(self, data) -> list[Callable]:
        self.check(data.reference_fingerprint(self.sequences))
        return [partial(attach_reference, lookup=self.cache.lookup)]

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

    def check_precision(self, precision: str) -> None:
        if self.manifest and self.manifest.get("precision") != precision:
            log.warning("reference log-probs in %s were computed at precision %s, this run trains at %s",
                        self.cache.path, self.manifest.get("precision"), precision)

    def __call__(self, batch: dict, cache: StepCache | None = None) -> SeqLogps:
        if "reference_logps" not in batch:
            raise RuntimeError("model.reference=precomputed, but the batch carries no reference log-probs: use "
                               "anyalign's PreferenceDataModule, bound to this module")
        return SeqLogps(batch["reference_logps"], batch["reference_tokens"])

    def check_batch(self, batch: dict, policy: SeqLogps) -> None:
        stored = batch["reference_tokens"]
        for seq in self.sequences:
            ix = batch["index"].get(seq)
            if ix is None:
                continue
            bad = (policy.tokens[ix] != stored[ix]).nonzero().flatten().tolist()
            if bad:
                raise StaleCache(f"reference cache {self.cache.path}: {seq} of sample(s) "
                                 f"{[batch['keys'][i] for i in bad]} has {int(policy.tokens[ix][bad[0]])} tokens now "
                                 f"but {int(stored[ix][bad[0]])} when precomputed; recompute the cache")
