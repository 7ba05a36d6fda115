"""The streaming pipeline: shards -> rank and worker split -> samples -> decode -> tokenize -> batches.

Every stage is a generator over an iterator, testable on ``iter([...])``. A bad sample becomes a
``Skipped`` record that flows down the stream with the batches, so it is counted and reported by key
in the main process, whatever worker met it, and no other sample moves.
"""
from __future__ import annotations

import hashlib
import itertools
import math
import random
import re
import tarfile
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.distributed as dist
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from modalities import BadSample

from .schema import describe_ignored, ignored_members, media_fields, parse_record


@dataclass(frozen=True)
class Skipped:
    url: str
    key: str
    reason: str

    def __post_init__(self):  # stable text: no object addresses (Pillow, soundfile), no decord timestamps
        object.__setattr__(self, "reason", _VOLATILE.sub("", self.reason))


_VOLATILE = re.compile(r" at 0x[0-9a-fA-F]+|\[\d\d:\d\d:\d\d\] ")


def _split_name(name: str) -> tuple[str, str]:
    """``dir/KEY.0.jpg`` -> (``dir/KEY``, ``0.jpg``): the key ends at the basename's first dot."""
    head, _, base = name.rpartition("/")
    stem, dot, field = base.partition(".")
    return (f"{head}/{stem}" if head else stem), field.lower()


def read_shards(urls: Iterator[str]) -> Iterator[dict | Skipped]:
    """Shard urls -> raw samples ``{"__key__", "__url__", field: bytes}``. Tar members are only read,
    never decoded. A broken shard reports where it broke and the stream moves on to the next one."""
    for url in urls:
        key, sample, seen = None, None, set()
        try:
            with wds.gopen(url, "rb") as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    k, field = _split_name(member.name)
                    if k != key:
                        if sample is not None:
                            yield sample
                        key, sample = k, None
                        if k in seen:
                            yield Skipped(url, k, "duplicate key in shard")
                        else:
                            seen.add(k)
                            sample = {"__key__": k, "__url__": url}
                    if sample is None:
                        continue
                    if field in sample:
                        yield Skipped(url, k, f"duplicate member {field!r}")
                        sample = None
                        continue
                    sample[field] = tar.extractfile(member).read()
                if sample is not None:
                    yield sample
        except (tarfile.TarError, OSError, EOFError) as e:
            where = f"after key {key}" if key else "at its start"
            yield Skipped(url, key or "<shard>", f"shard unreadable {where}: {type(e).__name__}: {e}")


def sample_digest(raw: dict) -> str:
    """Digest of a raw sample's tar members (names and bytes), computed in the data workers."""
    h = hashlib.blake2b(digest_size=16)
    for field in sorted(k for k in raw if not k.startswith("__")):
        h.update(field.encode() + b"\0" + len(raw[field]).to_bytes(8, "little"))
        h.update(raw[field])
    return h.hexdigest()



def shuffle_buffer(src: Iterator, size: int, rng: random.Random) -> Iterator:
    buf = []
    for x in src:
        if len(buf) < size:
            buf.append(x)
            continue
        i = rng.randrange(size)
        buf[i], x = x, buf[i]
        yield x
    rng.shuffle(buf)
    yield from buf


def decode(src: Iterator, adapters: dict, digest: bool = False, prompt_only: bool = False) -> Iterator[dict | Skipped]:
    """Raw sample -> ``{"key", "url", "messages", "responses", "media": {modality: [tensor, ...]}}``, plus
    the raw members' ``digest`` if asked (to match precomputed reference log-probs to their sample).
    ``prompt_only``: samples without responses are kept (``"responses": {}``), for online training."""
    for raw in src:
        if isinstance(raw, Skipped):
            yield raw
            continue
        url, key = raw["__url__"], raw["__key__"]
        try:
            if "json" not in raw:
                raise BadSample("no KEY.json member")
            record = parse_record(raw["json"], prompt_only)
            media = {}
            text = " ".join(m["content"] for m in record["messages"])
            for modality, adapter in adapters.items():
                fields = media_fields(raw, adapter.extensions)
                if not fields and adapter.container_extensions and adapter.placeholder in text:
                    fields = media_fields(raw, adapter.container_extensions)  # e.g. the soundtrack of KEY.mp4
                if fields:
                    adapter.check_items(len(fields))
                    media[modality] = [adapter.preprocess(adapter.decode(raw[f], ext)) for f, ext in fields]
            extra = {"digest": sample_digest(raw)} if digest else {}
            reads = {e for a in adapters.values() for e in (*a.extensions, *a.container_extensions)}
            unread = ignored_members(raw, reads)
            if unread:  # named in the reason if the prompt's markers then go short (``tokenize``)
                read_by = {e: name for name, cls in _registry().items() for e in cls.extensions}
                extra["ignored"] = describe_ignored(raw, unread, read_by)
            yield {"key": key, "url": url, **record, "media": media, **extra}
        except BadSample as e:
            yield Skipped(url, key, str(e))
        except Exception as e:  # an unexpected decoder failure must not stop training
            yield Skipped(url, key, f"{type(e).__name__}: {str(e)[:300]}")


def _registry() -> dict:
    """The registered adapter classes by name (to say which adapter would read an ignored member)."""
    from modalities.registry import ADAPTERS
    return dict(ADAPTERS)


def unpair(src: Iterator) -> Iterator[dict | Skipped]:
    """Paired -> unpaired (for KTO): the chosen response as a desirable sample, the rejected one as an
    undesirable sample, both sharing the already-decoded media (the stream doubles here)."""
    for ex in src:
        if isinstance(ex, Skipped) or "completion" in ex["responses"]:
            yield ex
            continue
        if "ranks" in ex:  # which of K responses is desirable is not a pair's plain label
            yield Skipped(ex["url"], ex["key"], "a K-response sample ('responses' with a ranking or scores) "
                                                "cannot be unpaired for KTO (data.unpair); convert it to pairs")
            continue
        weights = ex.get("weights", {})
        for suffix, field, label in (("c", "chosen", True), ("r", "rejected", False)):
            out = {**ex, "key": f"{ex['key']}-{suffix}", "responses": {"completion": ex["responses"][field]},
                   "desirable": label}
            out.pop("weights", None)
            if field in weights:  # a weighted span moves with its response
                out["weights"] = {"completion": weights[field]}
            yield out


def check_kind(src: Iterator, unpaired: bool) -> Iterator[dict | Skipped]:
    """Paired and unpaired samples cannot share a batch: the kind the losses do not use is bad."""
    for ex in src:
        if not isinstance(ex, Skipped) and ("completion" in ex["responses"]) != unpaired:
            have, want = ("unpaired", "paired") if unpaired is False else ("paired", "unpaired")
            yield Skipped(ex["url"], ex["key"], f"{have} sample, but the loss terms train on {want} samples")
            continue
        yield ex


def route_online(src: Iterator, fraction: float) -> Iterator[dict | Skipped]:
    """Online DPO (``data.online_fraction``): mark examples ``online`` (their responses are sampled from the
    policy in the training step) in the proportion ``fraction``, spread evenly over the stream: example i is
    online while fewer than floor((i + 1)·f) of the first i + 1 are, so each run of n examples from the start holds
    floor(n·f) online ones. A prompt-only sample (no responses in its ``KEY.json``) is always online, and counts
    towards the share (pairs after it stay offline until the share catches up). An online example keeps its
    ``messages`` and ``answer`` for the reward, and loses its own responses."""
    seen = online_seen = 0
    for ex in src:
        if isinstance(ex, Skipped):
            yield ex
            continue
        seen += 1
        online = not ex["responses"] or online_seen < math.floor(seen * fraction)
        online_seen += online
        if online:
            ex = {**ex, "responses": {}, "online": True}
            ex.pop("weights", None)
            ex.pop("ranks", None)
        yield ex


def tokenize(src: Iterator, tokenizer, adapters: dict) -> Iterator[dict | Skipped]:
    """Adds ``prompt`` (placeholders expanded) and tokenized ``responses``, plus per-token ``weights`` for
    the responses that carry weighted spans (none otherwise)."""
    for ex in src:
        if isinstance(ex, Skipped):
            yield ex
            continue
        try:
            spans = ex.get("weights")
            if getattr(tokenizer, "processes_media", False):
                # a pretrained family's processor: it expands the placeholders itself and returns the
                # media it processed (``anyalign/families``)
                ids = tokenizer.encode(ex["messages"], ex["responses"], ex["media"], spans)
            else:
                sizes = {m: [adapters[m].num_tokens(x) for x in items] for m, items in ex["media"].items()}
                ids = (tokenizer(ex["messages"], ex["responses"], sizes, spans) if spans
                       else tokenizer(ex["messages"], ex["responses"], sizes))
        except BadSample as e:
            reason = str(e)
            if ex.get("ignored") and "ignored member" not in reason and "but the sample has" in reason:
                reason += f"; ignored member(s): {ex['ignored']}"
            yield Skipped(ex["url"], ex["key"], reason)
            continue
        keep = ("desirable", "digest", "ranks") + (("online", "messages", "answer") if ex.get("online") else ())
        extra = {k: ex[k] for k in keep if k in ex}
        yield {"key": ex["key"], "url": ex["url"], "media": ex["media"], **ids, **extra}


def attach_reference(src: Iterator, lookup: Callable[[str, str, str], dict]) -> Iterator[dict | Skipped]:
    """Give each example its stored reference values: ``example["reference"] = lookup(url, key, digest)``
    (the precomputed reference's cache, read in the data workers)."""
    for ex in src:
        if not isinstance(ex, Skipped):
            ex["reference"] = lookup(ex["url"], ex["key"], ex["digest"])
        yield ex


def example_length(ex: dict) -> int:
    """Tokens of an example's group in a row: its prompt (media expanded) and its responses."""
    return len(ex["prompt"]) + sum(len(ids) for ids in ex["responses"].values())


def pack_order(src: Iterator, batch_size: int, capacity: int, buffer: int = 2) -> Iterator[dict | Skipped]:
    """For packed rows (``data.packing``): reorder examples inside a window of ``buffer`` batches so that each
    run of ``batch_size`` examples (the next stage's batch) fills packed rows of ``capacity`` tokens: a batch
    starts a row with its longest example and fills the row with the longest that still fit (greedy by length),
    then starts the next row, until it holds ``batch_size`` examples. An example waits at most ``buffer``
    batches (then it goes first), so none is held back for long; every example comes out once, ``Skipped``
    records pass at once, and the order depends on the stream only (seeded shuffling stays reproducible)."""
    window, made, arrived = [], 0, 0  # window: (arrival, batch number at arrival, example)

    def one_batch() -> list[dict]:
        nonlocal made
        due = sorted((x for x in window if made - x[1] >= buffer), key=lambda x: x[0])
        rest = sorted((x for x in window if made - x[1] < buffer), key=lambda x: (-example_length(x[2]), x[0]))
        chosen, room = [], 0
        for x in due[:batch_size]:  # overdue examples first, each opening a row or filling the open one
            n = example_length(x[2])
            room = room - n if n <= room else capacity - n
            chosen.append(x)
        while len(chosen) < batch_size and rest:
            fit = next((x for x in rest if example_length(x[2]) <= room), None)
            x = fit if fit is not None else rest[0]  # nothing fits: the longest opens a new row
            rest.remove(x)
            n = example_length(x[2])
            room = room - n if fit is not None else capacity - n
            chosen.append(x)
        ids = {id(x) for x in chosen}
        window[:] = [x for x in window if id(x) not in ids]
        made += 1
        return [x[2] for x in chosen]

    for x in src:
        if isinstance(x, Skipped):
            yield x
            continue
        window.append((arrived, made, x))
        arrived += 1
        if len(window) >= buffer * batch_size:
            yield from one_batch()
    while window:
        yield from one_batch()


class Deferred:
    """The collate of online training batches (``data.online_fraction`` > 0): the tokenized examples as they
    are, collated in the training step once the online ones have their sampled responses."""

    def __call__(self, examples: list[dict]) -> dict:
        return {"examples": examples, "keys": [ex["key"] for ex in examples],
                "urls": [ex.get("url", "") for ex in examples], "num_sequences": None}


def batched(src: Iterator, batch_size: int, collate: Callable[[list], dict]) -> Iterator[dict]:
    """Examples -> collated batches (the stream changes shape here). ``Skipped`` records ride along in
    ``batch["skipped"]``; the last partial batch is kept, and a stream of only bad samples still yields
    one batch with ``num_sequences == 0`` so they are reported."""
    buf, skipped, pending = [], [], None
    for x in src:
        if isinstance(x, Skipped):
            skipped.append((x.url, x.key, x.reason))
            continue
        buf.append(x)
        if len(buf) == batch_size:
            if pending is not None:
                yield pending
            pending, buf = {**collate(buf), "skipped": skipped}, []
            skipped = []
    if buf:
        if pending is not None:
            yield pending
        pending = {**collate(buf), "skipped": skipped}
    elif pending is not None:
        pending["skipped"] = pending["skipped"] + skipped
    elif skipped:
        pending = {"num_sequences": 0, "keys": [], "skipped": skipped}
    if pending is not None:
        yield pending


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class PreferenceStream(IterableDataset):
    """One epoch of batches for this rank and worker. Shards are reshuffled each epoch (seeded), split
    disjointly by rank, then by worker; samples are shuffled in a seeded buffer."""

    def __init__(self, urls: list[str], process: Callable[[Iterator], Iterator], shuffle: bool,
                 buffer: int, seed: int):
        self.urls, self.process, self.shuffle, self.buffer, self.seed = urls, process, shuffle, buffer, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shards(self, rank: int, world: int, worker: int, workers: int) -> list[str]:
        urls = list(self.urls)
        if self.shuffle:
            random.Random(f"{self.seed}/{self.epoch}").shuffle(urls)
        if len(urls) < world:  # too few shards for one per rank: every rank reads all, keeps its samples
            return urls[worker::workers]
        return urls[rank::world][worker::workers]

    def __iter__(self):
        rank, world = rank_and_world()
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        src: Iterator = read_shards(iter(self.shards(rank, world, worker, workers)))
        if len(self.urls) < world:
            src = itertools.islice(src, rank, None, world)
        if self.shuffle and self.buffer > 1:
            src = shuffle_buffer(src, self.buffer, random.Random(f"{self.seed}/{self.epoch}/{rank}/{worker}"))
        yield from self.process(src)


def worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers decode; the main process owns the cores for the model
