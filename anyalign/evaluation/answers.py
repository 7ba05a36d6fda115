"""Answers to held-out samples that carry a reference ``answer`` (and optionally ``choices``; ``data/schema.py``).

- generation accuracy: greedy ``generate`` (media encoded once per prompt); normalised exact match
  (``normalize_answer``) and "answer contained" (``answer_in``);
- likelihood-choice accuracy: each choice scored as the response to the prompt under the policy, all choices of a
  sample in one row of the shared layout (prompt and media once; separate rows under ``concatenated``), argmax by
  summed log-prob and by mean log-prob per token;
- answers unchanged when the media is replaced, per modality: the same generation with one modality's media taken
  from another sample (the next one, in order, with as many items and a different answer; any other one if none
  differs) or, where no other sample has such media, blanked by the adapter's ``null``/``mute`` operator. An answer
  that does not change was given without reading the media (lower is better); exact string comparison.

Samples are read and decoded in windows of ``WINDOW`` (so memory does not grow with the data set); a replacement
comes from the same window. Under several processes each rank takes every N-th window.
"""
from __future__ import annotations

import itertools
from collections import Counter
from typing import Iterator

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device

from modalities.base import BadSample

from ..data.collate import collate_rows
from ..data.pipeline import Skipped, decode, read_shards
from ..data.schema import answer_in, normalize_answer
from ..data.template import PreferenceTokenizer
from ..generation import generate, prepare

BLANK_OPERATORS = ("null", "mute", "blank")
WINDOW = 64  # samples decoded and held at a time; media replacements come from the same window


def windows(urls: list[str], limit: int | None = None, size: int = WINDOW) -> Iterator[list]:
    """The shards' raw samples (tar members, not decoded) in windows of ``size``; ``limit``: the first N only."""
    stream = read_shards(iter(urls))
    if limit is not None:
        stream = itertools.islice(stream, limit)
    while chunk := list(itertools.islice(stream, size)):
        yield chunk


def decode_window(raws: list, adapters: dict) -> tuple[list[dict], list[Skipped]]:
    """A window's samples with an ``answer``, decoded by the adapters as training decodes them; bad ones skipped."""
    samples, skipped = [], []
    for ex in decode(iter(raws), adapters):
        if isinstance(ex, Skipped):
            skipped.append(ex)
        elif "answer" in ex:
            samples.append({k: ex.get(k) for k in ("key", "url", "messages", "media", "answer", "choices",
                                                   "correct_choice")})
    return samples, skipped


def replacement(samples: list[dict], i: int, modality: str, adapter) -> tuple[list | None, str | None]:
    """Media to put in place of sample ``i``'s ``modality`` media, and where they come from."""
    own = samples[i]
    n, answer = len(own["media"][modality]), normalize_answer(own["answer"])
    fits = [samples[(i + k) % len(samples)] for k in range(1, len(samples))]
    fits = [s for s in fits if len(s["media"].get(modality, [])) == n]
    other = [s for s in fits if normalize_answer(s["answer"]) != answer]
    if fits:
        donor = (other or fits)[0]
        return donor["media"][modality], f"swap:{donor['key']}"
    op = next((o for o in BLANK_OPERATORS if o in adapter.operators), None)
    if op is None:
        return None, None
    return adapter.corrupt(list(own["media"][modality]), op, torch.Generator().manual_seed(0)), op


def _prepared(policy, samples: list[dict], skipped: list[Skipped]) -> list[tuple[int, dict]]:
    ready = []
    for i, s in enumerate(samples):
        try:
            ready.append((i, prepare(policy, s)))
        except (BadSample, OSError) as e:
            skipped.append(Skipped(s.get("url", ""), s["key"], str(e)))
    return ready


def _generate(policy, samples: list[dict], max_new_tokens: int, batch_size: int, skipped: list) -> dict[int, str]:
    ready = _prepared(policy, samples, skipped)
    out = generate(policy, [samples[i] for i, _ in ready], max_new_tokens, batch_size=batch_size,
                   prepared=[p for _, p in ready])
    return {i: a["response"] for (i, _), a in zip(ready, out)}


@torch.no_grad()
def choice_logps(policy, samples: list[dict], max_length: int, layout: str, batch_size: int,
                 skipped: list[Skipped]) -> dict[int, tuple[list[float], list[int]]]:
    """Index of each sample with ``choices`` -> (summed log-prob, token count) of each choice as its response."""
    make = getattr(policy, "preference_tokenizer", None)  # a pretrained family's processor, or the default
    tok = make(max_length) if make else PreferenceTokenizer(policy.tokenizer, policy.media_token_ids, max_length)
    adapters, device = dict(policy.adapters.items()), next(policy.parameters()).device
    todo = [i for i, s in enumerate(samples) if s.get("choices")]
    scores = {}
    policy.eval()
    for start in range(0, len(todo), batch_size):
        rows, owners = [], []
        for i in todo[start:start + batch_size]:
            s = samples[i]
            choices = {f"choice{k}": c for k, c in enumerate(s["choices"])}
            try:
                if getattr(tok, "processes_media", False):
                    ids = tok.encode(s["messages"], choices, s["media"])
                else:
                    sizes = {m: [adapters[m].num_tokens(x) for x in items] for m, items in s["media"].items()}
                    ids = tok(s["messages"], choices, sizes)
            except BadSample as e:
                skipped.append(Skipped(s.get("url", ""), s["key"], f"choices: {e}"))
                continue
            media = ids.get("media", s["media"])
            slots = [(name, len(owners), r) for name, r in ids["responses"].items()]
            if layout == "shared":
                rows.append((ids["prompt"], media, slots))
            else:
                rows.extend((ids["prompt"], media, [slot]) for slot in slots)
            owners.append(i)
        if not owners:
            continue
        batch = move_data_to_device(collate_rows(rows, policy.tokenizer.pad_token_id, adapters, len(owners)), device)
        out = policy(batch)
        logps, tokens = out.logps.float().cpu(), out.tokens.long().cpu()
        for e, i in enumerate(owners):
            ks = range(len(samples[i]["choices"]))
            ix = [int(batch["index"][f"choice{k}"][e]) for k in ks]
            scores[i] = ([float(logps[j]) for j in ix], [int(tokens[j]) for j in ix])
    return scores


def answer_records(policy, samples: list[dict], *, max_new_tokens: int, batch_size: int, max_length: int,
                   layout: str) -> tuple[list[dict], list[Skipped]]:
    """Per-sample results: the answer and its matches, the choices' scores, the answers under replaced media."""
    skipped: list[Skipped] = []
    answers = _generate(policy, samples, max_new_tokens, batch_size, skipped)
    choices = choice_logps(policy, samples, max_length, layout, batch_size, skipped)
    records = {}
    for j, s in enumerate(samples):
        if j not in answers:
            continue
        r = answers[j]
        rec = {"key": s["key"], "answer": s["answer"], "response": r,
               "exact": normalize_answer(r) == normalize_answer(s["answer"]), "contained": answer_in(s["answer"], r),
               "replaced": {}}
        if j in choices:
            logps, tokens = choices[j]
            means = [lp / max(t, 1) for lp, t in zip(logps, tokens)]
            rec |= {"choices": s["choices"], "correct_choice": s["correct_choice"], "choice_logps": logps,
                    "choice_tokens": tokens, "choice_by_sum": max(range(len(logps)), key=logps.__getitem__),
                    "choice_by_mean": max(range(len(means)), key=means.__getitem__)}
        records[j] = rec
    for m in sorted({m for s in samples for m in s["media"]}):
        variants, where = [], []
        for j, s in enumerate(samples):
            if j not in records or m not in s["media"]:
                continue
            media, source = replacement(samples, j, m, policy.adapters[m])
            if media is None:
                continue
            variants.append({**s, "media": {**s["media"], m: media}})
            where.append((j, source))
        changed = _generate(policy, variants, max_new_tokens, batch_size, skipped)
        for v, (j, source) in enumerate(where):
            if v in changed:
                records[j]["replaced"][m] = {"by": source, "response": changed[v],
                                             "unchanged": changed[v] == records[j]["response"]}
    return [records[j] for j in sorted(records)], skipped


def summarize(records: list[dict]) -> dict:
    """Generation accuracy, choice accuracy and unchanged-answer rates from per-sample records (of all ranks)."""
    def rate(xs):
        return sum(xs) / len(xs) if xs else None
    ch = [r for r in records if "choice_logps" in r]
    out = {"generation": {"samples": len(records), "exact": rate([r["exact"] for r in records]),
                          "contained": rate([r["contained"] for r in records])},
           "choices": {"samples": len(ch), "accuracy_mean": rate([r["choice_by_mean"] == r["correct_choice"] for r in ch]),
                       "accuracy_sum": rate([r["choice_by_sum"] == r["correct_choice"] for r in ch])},
           "unchanged_answers": {}}
    for m in sorted({m for r in records for m in r["replaced"]}):
        rep = [r["replaced"][m] for r in records if m in r["replaced"]]
        kinds = Counter(x["by"].partition(":")[0] for x in rep)
        out["unchanged_answers"][m] = {"samples": len(rep), "unchanged": sum(x["unchanged"] for x in rep),
                                       "rate": rate([x["unchanged"] for x in rep]), "replaced_by": dict(kinds)}
    return out
