"""Preference metrics and media reliance, computed by ``trainer.validate`` on the module's own ``validation_step``.

The preference pass is exactly ``python -m anyalign validate --data.val_shards SHARDS``: the same loader, the same
``_step`` and the same held-out verdicts (``metrics.HeldOut``, summed over ranks), so accuracy, ties, mean reward
margin and loss are validate's numbers. Media reliance takes one more pass per (modality, operator), with a
one-operator negatives spec through the normal collator: every sample gets its chosen response scored under that
corruption (a donor operator such as ``swap`` takes another sample of the batch, as in training), and validate logs
``media_reliance`` = mean over samples of log p(chosen | media) - log p(chosen | corrupted media), under the policy.
"""
from __future__ import annotations

import itertools
import logging
import tarfile
from dataclasses import dataclass, field
from functools import partial

import lightning as L

from ..data.loading import Compose, EpochLoader, EqualBatches, count_samples
from ..data.pipeline import PreferenceStream, rank_and_world


def take(src, n: int):
    """The first ``n`` records of a raw sample stream (a picklable pipeline stage)."""
    yield from itertools.islice(src, n)


class HeldOutData(L.LightningDataModule):
    """The held-out loader of a bound ``PreferenceDataModule``, built when the trainer asks for it (so under
    several processes the ranks split it as in ``validate``). ``limit``: only the first ``limit`` samples of each
    rank's stream, read without worker processes (so the cap is exact on one process)."""

    def __init__(self, data, limit: int | None = None):
        super().__init__()
        self.data, self.limit = data, limit

    def val_dataloader(self):
        d = self.data
        if self.limit is None:
            return d.val_dataloader()
        process = Compose([partial(take, n=self.limit), d._process(d.val_batch_size, d.held_out_negatives)])
        loader = EpochLoader(PreferenceStream(d.val_urls, process, False, 1, d.seed), num_workers=0)
        _, world = rank_and_world()
        if world == 1:
            return loader
        n = min(self.limit, count_samples(d.val_urls))
        return EqualBatches(loader, max(n // (world * d.val_batch_size), 1))


@dataclass
class Pass:
    logged: dict[str, float]            # what validate logs (val/loss, val/rewards/..., val/media_reliance)
    summary: dict | None                # HeldOut's verdicts: accuracy, ties, pairs (None: no verdict)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)


def validate_pass(trainer, module, data, negatives: dict | None, limit: int | None = None) -> Pass:
    """One ``trainer.validate`` over the held-out shards with ``negatives`` (a validated spec) in the batches.

    The held-out loader corrupts with ``data.held_out_negatives`` (``bind`` sets it: the config's negatives, else
    each adapter's reliance operator), so a pass with its own ``negatives`` sets that for its duration; ``None``
    keeps what ``bind`` set (the pass is then exactly ``validate``'s)."""
    data.negatives = negatives
    saved = data.held_out_negatives
    if negatives:
        data.held_out_negatives = negatives
    module.skipped, before = [], len(module.val_history)
    try:
        out = trainer.validate(module, datamodule=HeldOutData(data, limit), verbose=False)
    finally:
        data.held_out_negatives = saved
    summary = module.val_history[-1] if len(module.val_history) > before else None
    logged = {k: float(v) for k, v in (out[0] if out else {}).items()}
    return Pass(logged, summary, list(module.skipped))


def preference(p: Pass, unpaired: bool) -> dict:
    """Preference accuracy (ties are not right, and counted apart), mean reward margin and loss of one pass."""
    s = p.summary
    out = {"unit": "sample" if unpaired else "pair", "count": 0, "accuracy": None, "correct": 0, "ties": 0,
           "tie_rate": None, "margin": p.logged.get("val/rewards/margins"), "loss": p.logged.get("val/loss"),
           "logged_accuracy": p.logged.get("val/rewards/accuracies")}
    if s is not None:
        out |= {"count": s["pairs"], "accuracy": s["accuracy"], "correct": round(s["accuracy"] * s["pairs"]),
                "ties": s["ties"], "tie_rate": s["ties"] / s["pairs"]}
    return out


def modalities_in_shards(urls: list[str], adapters) -> list[str]:
    """Adapters that would decode a member of the shards (from the tar headers only, nothing decoded)."""
    exts: set[str] = set()
    for url in urls:
        if "://" in url or url.startswith("pipe:"):
            return list(adapters)  # not local: every adapter is assumed present
        try:
            with tarfile.open(url) as tar:
                exts |= {m.name.rpartition(".")[2].lower() for m in tar if m.isfile()}
        except (tarfile.TarError, OSError):
            continue  # the stream reports it
    return [m for m, a in adapters.items() if exts & set(a.extensions + a.container_extensions)]


def reliance_operators(negatives: dict, adapters, urls: list[str]) -> list[tuple[str, str, dict]]:
    """(modality, operator, params) to measure: the config's ``model.negatives`` entries, or, if it has none, every
    operator of each adapter present in the shards (aliases of one operator, e.g. ``static``/``freeze_video``, once)."""
    if negatives:
        return [(m, op, dict(params)) for m, ops in negatives.items() for op, _, params in ops]
    out = []
    for m in modalities_in_shards(urls, adapters):
        seen = []
        for name, fn in adapters[m].operators.items():
            base = getattr(fn, "op", fn)
            if not any(base is s for s in seen):
                seen.append(base)
                out.append((m, name, {}))
    return out


def reliance_label(modality: str, op: str, params: dict) -> str:
    args = ", ".join(f"{k}={v}" for k, v in params.items())
    return f"{modality}/{op}" + (f"({args})" if args else "")


def media_reliance(trainer, module, data, operators: list[tuple[str, str, dict]], limit: int | None = None) -> dict:
    """Mean log p(chosen | media) - log p(chosen | corrupted media) per (modality, operator), one pass each."""
    out, log = {}, logging.getLogger("anyalign")
    level = log.level
    log.setLevel(logging.ERROR)  # the preference pass reported the skipped samples; these passes meet them again
    try:
        for modality, op, params in operators:
            label = reliance_label(modality, op, params)
            out[label] = {"modality": modality, "operator": op, "params": params, "nats": None, "samples": 0}
            try:
                p = validate_pass(trainer, module, data, {modality: [(op, 1.0, params)]}, limit)
            except (ValueError, RuntimeError) as e:  # e.g. swap between items of different shapes
                if trainer.world_size > 1:
                    raise  # the other ranks would wait for this one
                out[label]["error"] = f"{type(e).__name__}: {e}"
                log.error("media reliance %s not measured: %s", label, out[label]["error"])
                continue
            out[label] |= {"nats": p.logged.get("val/media_reliance"), "samples": p.summary["pairs"] if p.summary else 0}
    finally:
        log.setLevel(level)
    return out
