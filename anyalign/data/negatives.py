"""Conditional negatives: the same chosen response under corrupted media (mDPO's conditional term).

``model.negatives`` names operators per modality with probabilities and parameters::

    negatives:
      video:
        - {op: shuffle_frames, p: 0.5}
        - {op: drop_segment, p: 0.5, fraction: 0.4}

For each sample, one operator per configured modality is drawn with those probabilities (normalised to
sum to 1) and applied in the data workers, with a generator seeded from (seed, sample key): the same
sample gets the same corruption under the same seed. Operators that declare they need another sample
(``@uses_donor``, e.g. ``swap``) take a donor from the same batch, never the sample itself; with
``donor_pick: other_answer`` on such an entry the donor is drawn among the samples whose chosen response
differs from this one's (on the trap-prior tasks: another class), any other sample where the batch has none::

    negatives:
      image:
        - {op: swap, donor_pick: other_answer}
"""
from __future__ import annotations

import inspect
import zlib

import torch

from modalities.base import needs_donor


def validate_negatives(negatives: dict | None, adapters: dict) -> dict[str, list[tuple[str, float, dict]]]:
    """Check ``model.negatives`` against the adapters' operators at start-up."""
    spec = {}
    for modality, entries in (negatives or {}).items():
        if modality not in adapters:
            raise ValueError(f"model.negatives.{modality}: no adapter named {modality!r} (have {sorted(adapters)})")
        ops = adapters[modality].operators
        if not entries:
            raise ValueError(f"model.negatives.{modality}: give at least one operator")
        parsed = []
        for i, entry in enumerate(entries):
            entry = dict(entry)
            op, p = entry.pop("op", None), float(entry.pop("p", 1.0))
            key = f"model.negatives.{modality}[{i}]"
            if op not in ops:
                raise ValueError(f"{key}.op={op!r} is not an operator of {modality}; known: {sorted(ops)}")
            if p <= 0:
                raise ValueError(f"{key}.p must be > 0, got {p}")
            fn = getattr(ops[op], "op", ops[op])
            allowed = [n for n, prm in inspect.signature(fn).parameters.items() if prm.default is not inspect.Parameter.empty
                       and n != "donor"] + (["donor_pick"] if needs_donor(ops[op]) else [])
            if entry.get("donor_pick", "any") not in DONOR_PICKS:
                raise ValueError(f"{key}.donor_pick={entry['donor_pick']!r} is not one of {list(DONOR_PICKS)}")
            unknown = set(entry) - set(allowed)
            if unknown:
                raise ValueError(f"{key} ({op}): unknown parameter(s) {sorted(unknown)}; {op} takes {allowed or 'none'}")
            parsed.append((op, p, entry))
        total = sum(p for _, p, _ in parsed)
        spec[modality] = [(op, p / total, params) for op, p, params in parsed]
    return spec


DONOR_PICKS = ("any", "other_answer")


def _chosen(ex: dict):
    """The example's chosen response's token ids (its best on a K-response sample; None if unpaired)."""
    from .schema import own_response
    name = own_response(ex, "chosen")
    return None if name is None else list(ex["responses"][name])


def reliance_spec(adapters: dict) -> dict[str, list[tuple[str, float, dict]]]:
    """The held-out corruption when ``model.negatives`` names none: each adapter's ``reliance_operator``, so
    ``media_reliance`` is measured on validation for every run (a baseline at step 0 included)."""
    return {m: [(a.reliance_operator, 1.0, {})] for m, a in adapters.items()
            if a.reliance_operator and a.reliance_operator in a.operators}


def sample_generator(seed: int, key: str) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(f"{seed}/{key}".encode()))


def corrupt_examples(examples: list[dict], spec: dict, adapters: dict, seed: int) -> list[dict[str, list]]:
    """Corrupted media for each example (its own media where no operator applies)."""
    out = []
    for i, ex in enumerate(examples):
        rng = sample_generator(seed, ex["key"])
        media = dict(ex["media"])
        for modality, choices in spec.items():
            if modality not in media:
                continue
            pick = torch.multinomial(torch.tensor([p for _, p, _ in choices]), 1, generator=rng).item()
            op, _, params = choices[pick]
            params = dict(params)
            pick_from = params.pop("donor_pick", "any")
            donor = None
            if needs_donor(adapters[modality].operators[op]):
                others = [j for j in range(len(examples)) if j != i and modality in examples[j]["media"]]
                if not others:  # a batch of one: no donor, so the sample keeps its media
                    continue
                if pick_from == "other_answer":  # class-aware: a sample whose chosen response differs, if any
                    own = _chosen(ex)
                    others = [j for j in others if _chosen(examples[j]) != own] or others
                donor = examples[others[int(torch.randint(len(others), (), generator=rng))]]["media"][modality]
            media[modality] = adapters[modality].corrupt(media[modality], op, rng, donor=donor, **params)
        out.append(media)
    return out
