"""Collate tokenized examples into rows of the shared token stream.

Layouts:
- ``shared`` (default): one row per pair, ``prompt | chosen | rejected``; media once per pair.
- ``concatenated``: two rows per pair, ``prompt | chosen`` and ``prompt | rejected``, media duplicated
  (what other frameworks do; kept as the baseline and the fallback for LMs that cannot take a 4-D mask).

Packing (``data.packing``, either layout): the rows above are "groups", and several groups share one packed
row up to a token capacity (``pack_rows``), with a ``groups`` tensor keeping them apart in the mask.

K responses per prompt (a sample with ``"responses"`` and a ranking or scores, ``schema.py``): its row holds the
prompt and media once and all K responses as slots ``response_0`` ... (each attending to the prompt and
itself only, positions continuing from the prompt's end: the same slot rule as a pair's). The batch then also
carries ``index["responses"]`` (``[B, K]`` sequence numbers, -1 where a sample has fewer than K) and ``ranks``
(``[B, K]`` float, 0 the best, +inf where absent); ``index["chosen"]``/``index["rejected"]`` point at each K
sample's best and worst response (ties: the first best, the last worst), so pair losses train on best vs worst
from the same row, and the corrupted-media rows score the best (``chosen_corrupt``) and the worst
(``rejected_corrupt``) response. A pair is K = 2
(``[chosen, rejected]``, ranks ``[0, 1]``) when a listwise loss asks for ``responses``.

A row is ``(prompt_ids, media, [(sequence_name, example_index, response_ids, token_weights), ...])``;
``token_weights`` is a list of floats beside ``response_ids`` (from weighted spans, see ``template.py``) or
``None`` for all 1.0 (a 3-tuple slot means the same). See ``anyalign/logprobs.py`` for what ``roles``,
``pred_pos``, ``target_seq`` and ``token_weights`` mean.
"""
from __future__ import annotations

import torch

from ..sequences import SEQUENCES
from .negatives import corrupt_examples
from .schema import best_and_worst, own_response  # noqa: F401  (re-exported: the collator's names)

LAYOUTS = ("shared", "concatenated")


def _weights(ex: dict, name: str) -> list[float] | None:
    return ex.get("weights", {}).get(name)


def _kinds(flag: str) -> list:
    """Sequence kinds scored after another example's prompt (``other_example``: KTO's ``kl``) or under
    corrupted media (``corrupted_media``: ``chosen_corrupt``, ``rejected_corrupt``), read from the registry when a
    batch is built."""
    return [k for k in SEQUENCES.values() if getattr(k, flag)]


def rows_for(examples: list[dict], layout: str) -> list[tuple]:
    rows = []
    for i, ex in enumerate(examples):
        slots = [(name, i, ids, _weights(ex, name)) for name, ids in ex["responses"].items()]
        for kind in _kinds("other_example"):
            if kind.response not in ex["responses"]:
                continue
            # KTO's KL baseline: this prompt with the next sample's completion (a mismatched pair, as in
            # the KTO paper and TRL), scored in the same row so the prompt and media run once.
            # It keeps that completion's own token weights (not 1): the weights belong to the completion's
            # text whatever prompt it is scored under, and KTO's reference point z0 estimates the expected
            # implied reward, so it must be the same weighted log-ratio as the rewards it is subtracted
            # from; unit weights here would put the baseline on another scale than the weighted rewards.
            nxt = examples[(i + 1) % len(examples)]
            slots.append((kind.name, i, nxt["responses"][kind.response], _weights(nxt, kind.response)))
        if layout == "shared":
            rows.append((ex["prompt"], ex["media"], slots))
        elif layout == "concatenated":
            rows.extend((ex["prompt"], ex["media"], [slot]) for slot in slots)
        else:
            raise ValueError(f"data.layout={layout!r} is not one of {LAYOUTS}")
    return rows


def group_length(row: tuple) -> int:
    """Tokens of one group (a prompt and its slots): what it takes of a packed row."""
    prompt, _, slots = row
    return len(prompt) + sum(len(slot[2]) for slot in slots)


def pack_rows(rows: list[tuple], capacity: int) -> list[list[tuple]]:
    """First-fit decreasing: the groups (``rows_for``'s rows) into as few packed rows of at most ``capacity``
    tokens as it finds; a group longer than ``capacity`` gets a row of its own (it is never cut). Deterministic:
    ties keep the groups' order, and each packed row keeps its groups in their batch order."""
    order = sorted(range(len(rows)), key=lambda i: -group_length(rows[i]))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = group_length(rows[i])
        for b, free in enumerate(room):
            if n <= free:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(capacity - n)
    return [[rows[i] for i in sorted(b)] for b in sorted(bins, key=min)]


def collate_rows(rows: list[tuple], pad_id: int, adapters: dict, num_examples: int,
                 pad_to_multiple_of: int = 1, pack: int | None = None) -> dict:
    """``rows`` (one group each) -> the batch tensors. ``pack``: the row capacity in tokens of packed rows
    (several groups per row, see ``pack_rows``), which adds ``groups`` (each position's group in its row, -1
    padding); positions restart at 0 in every group. None: one group per row, and no ``groups``."""
    packed = pack_rows(rows, pack) if pack else [[row] for row in rows]
    length = max(sum(group_length(g) for g in groups) for groups in packed)
    length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    n = len(packed)
    input_ids = torch.full((n, length), pad_id, dtype=torch.long)
    roles = torch.full((n, length), -1, dtype=torch.long)
    position_ids = torch.zeros((n, length), dtype=torch.long)
    target_seq = torch.full((n, length), -1, dtype=torch.long)
    pred_pos = torch.zeros((n, length), dtype=torch.long)
    token_weights = torch.zeros((n, length), dtype=torch.float32)
    group_ids = torch.full((n, length), -1, dtype=torch.long) if pack else None
    index: dict[str, list[int]] = {}
    media: dict[str, list] = {}
    seq = 0
    for r, groups in enumerate(packed):
        start = 0
        for g, (prompt, row_media, slots) in enumerate(groups):
            p = len(prompt)
            input_ids[r, start:start + p] = torch.tensor(prompt, dtype=torch.long)
            roles[r, start:start + p] = 0
            position_ids[r, start:start + p] = torch.arange(p)
            offset = start + p
            for k, (name, example, ids, *weights) in enumerate(slots, start=1):
                weights = weights[0] if weights else None
                end = offset + len(ids)
                input_ids[r, offset:end] = torch.tensor(ids, dtype=torch.long)
                roles[r, offset:end] = k
                position_ids[r, offset:end] = torch.arange(p, p + len(ids))
                target_seq[r, offset:end] = seq
                if weights is None:
                    token_weights[r, offset:end] = 1.0
                else:
                    if len(weights) != len(ids):
                        raise ValueError(f"{name} of example {example}: {len(weights)} token weights for {len(ids)} tokens")
                    token_weights[r, offset:end] = torch.tensor(weights, dtype=torch.float32)
                pred_pos[r, offset:end] = torch.arange(offset - 1, end - 1)
                pred_pos[r, offset] = start + p - 1  # a slot's first token is predicted by the last prompt token
                index.setdefault(name, [-1] * num_examples)[example] = seq
                seq += 1
                offset = end
            if group_ids is not None:
                group_ids[r, start:offset] = g
            start = offset
            # one item list per group, in row-major order: the order of the placeholder positions they fill
            for modality, items in row_media.items():
                media.setdefault(modality, []).append(items)
    batch = {
        "input_ids": input_ids, "roles": roles, "position_ids": position_ids, "target_seq": target_seq,
        "pred_pos": pred_pos, "token_weights": token_weights, "num_sequences": seq,
        "index": {name: torch.tensor(ix, dtype=torch.long) for name, ix in index.items()},
        "media": {m: adapters[m].collate_samples(groups) for m, groups in media.items()},
    }
    if group_ids is not None:
        batch["groups"] = group_ids
    return batch


#: the corrupted-media kinds a batch carries when nobody says otherwise (mDPO's conditional term, and the
#: held-out ``media_reliance``)
DEFAULT_CORRUPT_KINDS = ("chosen_corrupt",)


def conditional_rows(examples: list[dict], corrupted: list[dict], kinds: tuple[str, ...] = DEFAULT_CORRUPT_KINDS,
                     layout: str = "shared") -> list[tuple]:
    """``prompt(corrupted media) | response``: the kind's response (``chosen_corrupt``: the chosen one, on a
    K-response sample its best; ``rejected_corrupt``: the rejected one, on a K-response sample its worst) under
    corrupted media, with that response's token weights (the same text, so the same tokens are up-weighted),
    for each corrupted-media sequence kind in ``kinds``. All kinds of an example share its one corrupted media:
    with the ``shared`` layout they are slots of one row (``prompt(m̃) | chosen | rejected``), with
    ``concatenated`` one row each."""
    rows = []
    for i, (ex, media) in enumerate(zip(examples, corrupted)):
        slots = [(kind.name, i, ex["responses"][name], _weights(ex, name))
                 for kind in _kinds("corrupted_media") if kind.name in kinds
                 if (name := own_response(ex, kind.response)) is not None]
        if layout == "shared" and slots:
            rows.append((ex["prompt"], media, slots))
        else:
            rows.extend((ex["prompt"], media, [slot]) for slot in slots)
    return rows


def add_listwise(batch: dict, examples: list[dict], listwise: bool) -> None:
    """K-response samples' ``chosen``/``rejected`` (best and worst) and, if any sample has K responses or
    ``listwise`` (a loss takes ``responses``), ``index["responses"]`` and ``ranks`` (see the module docstring).
    The per-response names ``response_k`` leave the index: ``responses`` holds them."""
    from .schema import response_name
    index, n = batch["index"], len(examples)
    ranked = [ex for ex in examples if "ranks" in ex]
    if not ranked and not listwise:
        return
    width = max([len(ex["ranks"]) for ex in ranked] + [2])
    seqs = torch.full((n, width), -1, dtype=torch.long)
    ranks = torch.full((n, width), float("inf"))
    names = [response_name(k) for k in range(width)]
    for i, ex in enumerate(examples):
        if "ranks" in ex:
            k = len(ex["ranks"])
            seqs[i, :k] = torch.stack([index[name][i] for name in names[:k]])
            ranks[i, :k] = torch.tensor(ex["ranks"], dtype=torch.float32)
            best, worst = best_and_worst(ex["ranks"])
            for side, r in (("chosen", best), ("rejected", worst)):
                index.setdefault(side, torch.full((n,), -1, dtype=torch.long))[i] = seqs[i, r]
        elif "chosen" in ex["responses"] and "rejected" in ex["responses"]:  # a pair: K = 2
            seqs[i, :2] = torch.stack([index["chosen"][i], index["rejected"][i]])
            ranks[i, :2] = torch.tensor([0.0, 1.0])
    for name in names:
        index.pop(name, None)
    index["responses"] = seqs
    batch["ranks"] = ranks


def add_reference(batch: dict, examples: list[dict]) -> None:
    """Precomputed reference values, aligned with the batch's sequences (NaN / -1 where none is stored)."""
    logps = torch.full((batch["num_sequences"],), float("nan"))
    tokens = torch.full((batch["num_sequences"],), -1.0)
    for name, ix in batch["index"].items():
        if ix.dim() != 1:  # ``responses`` ([B, K]): its entries are sequences of their own, stored per name
            continue
        for i, ex in enumerate(examples):
            if ix[i] >= 0 and name in ex["reference"]:
                logps[ix[i]], tokens[ix[i]] = ex["reference"][name]
    batch["reference_logps"], batch["reference_tokens"] = logps, tokens


class Collator:
    """Picklable collate for the data workers: examples -> batch dict. With ``negatives`` (a validated
    spec), each pair also gets a row per corrupted-media kind of ``corrupt_kinds`` (default ``chosen_corrupt``:
    its chosen response under corrupted media; ``rejected_corrupt``: its rejected one). ``listwise``: a loss
    takes all responses (``index["responses"]``, ``ranks``), pairs included as K = 2. ``pack``: the
    capacity in tokens of packed rows (``data.packing``), each holding as many of the batch's groups (pairs,
    and corrupted-media rows) as fit; None: one group per row."""

    def __init__(self, layout: str, pad_id: int, adapters: dict, pad_to_multiple_of: int = 1,
                 negatives: dict | None = None, seed: int = 0, pack: int | None = None, listwise: bool = False,
                 corrupt_kinds: tuple[str, ...] = DEFAULT_CORRUPT_KINDS):
        if layout not in LAYOUTS:
            raise ValueError(f"data.layout={layout!r} is not one of {LAYOUTS}")
        self.layout, self.pad_id, self.adapters, self.multiple = layout, pad_id, adapters, pad_to_multiple_of
        self.negatives, self.seed, self.pack, self.listwise = negatives, seed, pack, listwise
        self.corrupt_kinds = tuple(corrupt_kinds)

    def __call__(self, examples: list[dict]) -> dict:
        rows = rows_for(examples, self.layout)
        if self.negatives:
            corrupted = corrupt_examples(examples, self.negatives, self.adapters, self.seed)
            rows += conditional_rows(examples, corrupted, self.corrupt_kinds, self.layout)
        batch = collate_rows(rows, self.pad_id, self.adapters, len(examples), self.multiple, self.pack)
        add_listwise(batch, examples, self.listwise)
        batch["keys"] = [ex["key"] for ex in examples]
        batch["urls"] = [ex.get("url", "") for ex in examples]
        if "digest" in examples[0]:
            batch["digests"] = [ex["digest"] for ex in examples]
        if "reference" in examples[0]:
            add_reference(batch, examples)
        if "desirable" in examples[0]:
            batch["desirable"] = torch.tensor([ex["desirable"] for ex in examples])
        return batch
