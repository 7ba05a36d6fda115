"""Scan shards the way training reads them: every sample through the data module's own ``decode`` and
``tokenize`` stages, one small record each (counts, members, media items, token lengths, bad samples with
their reasons). ``preflight`` is the same scan as a gate, run by the data module before training when
``data.preflight_max_bad_fraction`` is set; ``python -m anyalign inspect`` prints the report.
"""
from __future__ import annotations

import logging
import math
import statistics
from collections import Counter
from typing import Callable, Iterator

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .pipeline import Skipped, decode, read_shards, tokenize, worker_init

log = logging.getLogger("anyalign")


def example_stages(dm) -> list[Callable]:
    """The stages of a bound DataModule that can reject a sample: its own ``decode`` and ``tokenize``."""
    return [s for s in dm._process(1, online=True).stages if getattr(s, "func", None) in (decode, tokenize)]


def _note_members(src: Iterator, seen: dict) -> Iterator:
    for raw in src:  # raw samples pass unchanged; their member extensions are noted by (url, key)
        if not isinstance(raw, Skipped):
            seen[raw["__url__"], raw["__key__"]] = [f.rpartition(".")[2] for f in raw if not f.startswith("__")]
        yield raw


def summarize(urls: list[str], stages: list[Callable]) -> Iterator[dict]:
    """Shards -> one small record per sample (no tensors, so workers send back little)."""
    seen: dict = {}
    src = _note_members(read_shards(iter(urls)), seen)
    for stage in stages:
        src = stage(src)
    for x in src:
        if isinstance(x, Skipped):
            yield {"url": x.url, "key": x.key, "reason": x.reason, "members": seen.pop((x.url, x.key), [])}
            continue
        yield {"url": x["url"], "key": x["key"], "members": seen.pop((x["url"], x["key"]), []),
               "media": {m: len(items) for m, items in x["media"].items()},
               "tokens": {"prompt": len(x["prompt"]), **{n: len(ids) for n, ids in x["responses"].items()}}}


class _Scan(IterableDataset):
    def __init__(self, urls: list[str], stages: list[Callable]):
        self.urls, self.stages = urls, stages

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        return summarize(self.urls[worker::workers], self.stages)


def _dist(xs: list[int]) -> dict | None:
    if not xs:
        return None
    s = sorted(xs)
    return {"min": s[0], "median": statistics.median(s), "p95": s[math.ceil(0.95 * len(s)) - 1], "max": s[-1]}


def scan(urls: list[str], stages: list[Callable], num_workers: int = 0, adapters: dict | None = None) -> dict:
    """Run ``stages`` over every sample of ``urls`` (``num_workers`` processes, split by shard) -> report."""
    workers = min(num_workers, len(urls))
    records = (DataLoader(_Scan(list(urls), stages), batch_size=None, num_workers=workers, worker_init_fn=worker_init)
               if workers else summarize(list(urls), stages))
    members, items, tokens, bad = Counter(), {}, {}, []
    good = unpaired = 0
    for r in records:
        members.update(r["members"])
        if "reason" in r:
            bad.append({"url": r["url"], "key": r["key"], "reason": r["reason"]})
            continue
        good += 1
        unpaired += "completion" in r["tokens"]
        for m, n in r["media"].items():
            items.setdefault(m, Counter())[n] += 1
        for name, n in r["tokens"].items():
            tokens.setdefault(name, []).append(n)
    claims: dict[str, list[str]] = {"json": ["text"]}
    for name, a in (adapters or {}).items():
        for ext in a.extensions:
            claims.setdefault(ext, []).append(name)
        for ext in a.container_extensions:
            claims.setdefault(ext, []).append(f"{name} (its track, when the prompt has {a.placeholder})")
    return {"shards": len(urls), "samples": good + len(bad), "good": good, "bad": len(bad),
            "paired": good - unpaired, "unpaired": unpaired,
            "members": {ext: {"count": n, "read_by": claims.get(ext, []) if adapters is not None else None}
                        for ext, n in sorted(members.items())},
            "media_items": {m: {str(k): v for k, v in sorted(c.items())} for m, c in sorted(items.items())},
            "tokens": {name: _dist(tokens[name]) for name in ("prompt", "chosen", "rejected", "completion")
                       if name in tokens},
            "bad_samples": bad, "bad_reasons": dict(Counter(b["reason"].split(":")[0] for b in bad).most_common())}


def format_report(r: dict) -> str:
    lines = [f"{r['shards']} shard(s), {r['samples']} samples: {r['good']} good, {r['bad']} bad; "
             f"good ones: {r['paired']} paired, {r['unpaired']} unpaired", "members by extension:"]
    for ext, m in r["members"].items():
        who = "" if m["read_by"] is None else " -> " + (", ".join(m["read_by"]) or "ignored (never decoded)")
        lines.append(f"  .{ext:8s} {m['count']:7d}{who}")
    lines.append("media items per good sample:" + ("" if r["media_items"] else " none"))
    for m, hist in r["media_items"].items():
        lines.append(f"  {m}: " + ", ".join(f"{n} item(s) in {c} sample(s)" for n, c in hist.items()))
    lines.append("tokens (prompt with media expanded)   min  median     p95     max")
    for name, d in r["tokens"].items():
        lines.append(f"  {name:34s} {d['min']:5d} {d['median']:7g} {d['p95']:7d} {d['max']:7d}")
    lines.append(f"bad samples: {r['bad']}" + (", by reason:" if r["bad"] else ""))
    lines += [f"  {n:5d}  {reason}" for reason, n in r["bad_reasons"].items()]
    lines += [f"  {b['key']} ({b['url']}): {b['reason']}" for b in r["bad_samples"][:50]]
    if r["bad"] > 50:
        lines.append(f"  ... and {r['bad'] - 50} more (--json lists all)")
    return "\n".join(lines)


def preflight(urls: list[str], stages: list[Callable], max_bad_fraction: float, num_workers: int = 0) -> dict:
    """Scan the training shards with the real stages; raise ``ValueError`` listing the first bad keys if
    more than ``max_bad_fraction`` of the samples are bad."""
    report = scan(urls, stages, num_workers)
    fraction = report["bad"] / max(report["samples"], 1)
    if fraction > max_bad_fraction:
        first = "\n".join(f"    {b['key']} ({b['url']}): {b['reason']}" for b in report["bad_samples"][:20])
        raise ValueError(f"data.preflight_max_bad_fraction={max_bad_fraction}: {report['bad']} of "
                         f"{report['samples']} training samples are bad (fraction {fraction:.4f}); first bad keys:\n"
                         f"{first}\n(python -m anyalign.data.inspect lists them all)")
    (log.warning if report["bad"] else log.info)("pre-flight: %d of %d training samples bad (%.4f <= %s)",
                                                 report["bad"], report["samples"], fraction, max_bad_fraction)
    return report


