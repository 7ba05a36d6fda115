"""Shards and loaders: expanding shard patterns, counting samples, and the epoch-aware DataLoader wrappers
that resume mid-epoch and give every rank the same number of batches.

Every rank must run the same number of batches per epoch or distributed training hangs. With one
process an epoch is exactly one pass (each sample once). With several, each rank reads its own disjoint
shards, cycling them if needed, for ``samples_per_epoch // (world_size * batch_size)`` batches;
``samples_per_epoch`` defaults to the number of samples counted in the shards' tar headers.
"""
from __future__ import annotations

import tarfile
from pathlib import Path

import braceexpand
from torch.utils.data import DataLoader

from modalities.base import BadSample

from .pipeline import PreferenceStream
from .schema import is_unpaired, parse_record


def expand_shards(spec: str | list[str] | None, key: str) -> list[str]:
    if spec is None:
        return []
    specs = [spec] if isinstance(spec, str) else list(spec)
    urls = [u for s in specs for u in braceexpand.braceexpand(s)]
    if not urls:
        raise ValueError(f"{key}: no shards in {spec!r}")
    for u in urls:
        if "://" not in u and not u.startswith("pipe:") and not Path(u).is_file():
            raise FileNotFoundError(f"{key}: shard not found: {u}")
    return urls


def check_sample_kind(urls: list[str], key: str, wants_unpaired: bool, unpair: bool = False) -> None:
    """Fail before training when the loss terms need unpaired samples and the shards hold pairs (or the
    reverse), judged from the first sample of the first local shard."""
    first = next((u for u in urls if Path(u).is_file()), None)
    if first is None:
        return
    with tarfile.open(first) as tar:
        member = next((m for m in tar if m.name.endswith(".json")), None)
        if member is None:
            return
        try:
            unpaired = unpair or is_unpaired(parse_record(tar.extractfile(member).read()))
        except BadSample:
            return  # a bad first sample is reported by the stream like any other
    if wants_unpaired != unpaired:
        need = "unpaired samples (prompt, completion, label)" if wants_unpaired else "paired samples (chosen, rejected)"
        have = "unpaired" if unpaired else "paired"
        raise ValueError(f"model.losses need {need}, but {key} holds {have} samples ({first})"
                         + ("; set data.unpair: true to split each pair into two" if wants_unpaired else ""))


def count_samples(urls: list[str]) -> int:
    """Samples in local shards, from tar headers only (``KEY.json`` members)."""
    n = 0
    for u in urls:
        try:
            with tarfile.open(u) as tar:
                n += sum(1 for m in tar.getmembers() if m.name.endswith(".json"))
        except (tarfile.TarError, OSError):
            pass  # counted as bad when read
    return n


class Compose:
    """Chain generator stages (picklable, unlike a closure, for spawned workers)."""

    def __init__(self, stages: list):
        self.stages = stages

    def __call__(self, src):
        for stage in self.stages:
            src = stage(src)
        return src


class EqualBatches:
    """Exactly ``n`` batches per epoch from ``loader``, restarting it if it runs dry."""

    def __init__(self, loader: "EpochLoader", n: int):
        self.loader, self.n = loader, n
        self.sampler, self.dataset, self.batch_sampler = loader, loader.dataset, None  # see EpochLoader

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        done = self.loader.skip  # resumed mid-epoch: those batches were trained already
        while done < self.n:
            produced = False
            for batch in self.loader:
                produced = True
                yield batch
                done += 1
                if done == self.n:
                    return
            if not produced:
                raise RuntimeError("this rank's shards produced no batch; give every rank at least one shard")


class EpochLoader:
    """A DataLoader over a ``PreferenceStream`` that knows its epoch and can resume mid-epoch.

    Lightning sets the epoch through ``sampler.set_epoch`` at each epoch start; workers are not
    persistent, so each new iteration re-sends the stream, epoch included, to fresh workers. The stream
    is a deterministic function of (seed, epoch), so resuming replays the epoch and drops the ``skip``
    batches that were already trained: no sample is repeated or skipped.
    """

    def __init__(self, stream: PreferenceStream, epoch: int = 0, skip: int = 0, **kwargs):
        self.stream, self.loader = stream, DataLoader(stream, batch_size=None, **kwargs)
        self.epoch, self.skip = epoch, skip
        # Lightning's per-epoch hook, _set_sampler_epoch, calls loader.sampler.set_epoch(epoch); its
        # shuffle check looks at .dataset (an IterableDataset) and .batch_sampler first
        self.sampler, self.dataset, self.batch_sampler = self, stream, None

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.skip = epoch, 0

    def __iter__(self):
        self.stream.set_epoch(self.epoch)
        skip, self.skip = self.skip, 0
        for i, batch in enumerate(self.loader):
            if i >= skip:
                yield batch


def resume_position(trainer) -> tuple[int, int]:
    """(epoch, batches already trained in it) from a trainer restored from a checkpoint."""
    if trainer is None:
        return 0, 0
    loop = trainer.fit_loop
    epochs = loop.epoch_progress.current
    if epochs.started > epochs.processed:  # the checkpoint was taken inside an epoch
        return epochs.processed, loop.epoch_loop.batch_progress.current.processed
    return epochs.processed, 0


def idle_readers(shards: int, world: int, workers: int) -> str | None:
    """Why some data readers will sit idle, or None: shards are split by rank, then by data-loader worker, so fewer
    shards than ranks x workers leaves readers with none (fewer than ranks: every rank reads all and keeps its share
    of samples, each decoding every sample)."""
    readers = world * max(workers, 1)
    if shards >= readers:
        return None
    return (f"{shards} shard(s) for {world} rank(s) x {max(workers, 1)} data worker(s): {readers - shards} reader(s) "
            f"get no shard and idle; split the data into at least {readers} shards (python -m anyalign convert "
            f"... --shards {readers}) or lower data.num_workers")
