"""PreferenceDataModule: WebDataset shards in, collated preference batches out.

Model-dependent settings bind late: in ``setup`` the module takes the tokenizer, the media token ids
and the adapters' CPU preprocessing from the model being trained, so one data config serves any model.

Every rank must run the same number of batches per epoch or distributed training hangs. With one
process an epoch is exactly one pass (each sample once). With several, each rank reads its own disjoint
shards, cycling them if needed, for ``samples_per_epoch // (world_size * batch_size)`` batches;
``samples_per_epoch`` defaults to the number of samples counted in the shards' tar headers.
"""
from __future__ import annotations

import logging
import tarfile
from functools import partial
from pathlib import Path

import braceexpand
import lightning as L
from torch.utils.data import DataLoader

from modalities import BadSample

from ..precompute import attach_reference
from .collate import LAYOUTS, Collator
from .pipeline import (PreferenceStream, batched, check_kind, decode, rank_and_world, tokenize, unpair,
                       worker_init)
from .schema import is_unpaired, parse_record
from .template import PreferenceTokenizer

log = logging.getLogger("anyalign")


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


def check_sample_kind(urls: list[str], key: str, sequences: list[str], unpair: bool = False) -> None:
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
    wants_unpaired = "completion" in sequences
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


class PreferenceDataModule(L.LightningDataModule):
    def __init__(
        self,
        train_shards: str | list[str],
        val_shards: str | list[str] | None = None,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 2,
        shuffle_buffer: int = 256,
        max_length: int = 1024,
        layout: str = "shared",
        pad_to_multiple_of: int = 8,
        samples_per_epoch: int | None = None,
        unpair: bool = False,
        seed: int = 0,
        preflight_max_bad_fraction: float | None = None,
    ):
        """
        Args:
            train_shards: training shards: a path, a brace pattern (``data/train-{000..009}.tar``) or a list.
            val_shards: held-out shards for validation (reward accuracy on pairs never trained on).
            batch_size: preference pairs per batch, per rank.
            val_batch_size: pairs per validation batch (default: batch_size).
            num_workers: data-loader worker processes per rank (decode and preprocess media).
            shuffle_buffer: samples held for shuffling within each worker (1 disables).
            max_length: token limit of prompt + one response; longer responses are truncated.
            layout: ``shared`` (prompt and media once per pair) or ``concatenated`` (duplicated, baseline).
            pad_to_multiple_of: pad row length up to a multiple of this.
            samples_per_epoch: dataset size used to equalise batches across ranks (default: counted).
            unpair: turn each pair into two unpaired samples (chosen: desirable, rejected: undesirable),
                for KTO on paired data.
            seed: shuffling seed (shards per epoch and the sample buffer).
            preflight_max_bad_fraction: scan all training shards before training and fail, listing bad keys,
                if more than this fraction of samples is bad; None skips the scan.
        """
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        if layout not in LAYOUTS:
            raise ValueError(f"data.layout={layout!r} is not one of {LAYOUTS}")
        if max_length < 2:
            raise ValueError(f"data.max_length must be >= 2, got {max_length}")
        if preflight_max_bad_fraction is not None and not 0 <= preflight_max_bad_fraction <= 1:
            raise ValueError(f"data.preflight_max_bad_fraction must be in [0, 1], got {preflight_max_bad_fraction}")
        self.train_urls = expand_shards(train_shards, "data.train_shards")
        self.val_urls = expand_shards(val_shards, "data.val_shards")
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.num_workers, self.shuffle_buffer, self.max_length = num_workers, shuffle_buffer, max_length
        self.layout, self.pad_to_multiple_of = layout, pad_to_multiple_of
        self.samples_per_epoch, self.seed, self.unpair = samples_per_epoch, seed, unpair
        self.model, self.reference = None, None
        self.negatives, self.train_negatives, self.unpaired = None, False, False
        self.preflight_max_bad_fraction, self.preflight_report = preflight_max_bad_fraction, None

    def bind(self, model, negatives: dict | None = None, train_negatives: bool = False,
             unpaired: bool = False, reference=None) -> None:
        """Take the tokenizer and the adapters' preprocessing from the model (a MultimodalLM), and the
        validated negatives spec; training batches carry corrupted-media rows only if a loss term needs
        them, validation batches whenever negatives are configured (to measure media reliance). With a
        precomputed ``reference``, its cache is checked against this data here, before any training."""
        self.model, self.negatives, self.train_negatives = model, negatives, train_negatives
        self.unpaired = unpaired  # the loss terms train on unpaired samples (KTO)
        self.reference = reference if hasattr(reference, "cache") else None
        reason = model.shared_layout_unsupported_reason() if self.layout == "shared" else None
        if reason is not None:
            log.warning("data.layout=shared needs a 4-D attention mask, but %s: training with data.layout="
                        "concatenated (prompt and media duplicated per response)", reason)
            self.layout = "concatenated"
        if self.reference is not None:
            self.reference.check(self.reference_fingerprint(self.reference.sequences))

    def reference_fingerprint(self, sequences: list[str]) -> dict:
        """The data settings precomputed reference log-probs depend on (the rest is per sample)."""
        fp = {"max_length": self.max_length, "unpair": self.unpair}
        if "chosen_corrupt" in sequences:  # the conditional rows' corruption is drawn from (seed, key)
            fp |= {"seed": self.seed, "negatives": {m: [list(x) for x in ops] for m, ops in (self.negatives or {}).items()}}
        return fp

    def all_urls(self) -> list[str]:
        return list(dict.fromkeys(self.train_urls + self.val_urls))

    def precompute_dataloader(self):
        """Every training and held-out shard once, in order, with each sample's digest (for precompute)."""
        negatives = self.negatives if self.train_negatives else None
        stream = PreferenceStream(self.all_urls(), self._process(self.val_batch_size, negatives, digest=True),
                                  False, 1, self.seed)
        return EpochLoader(stream, num_workers=self.num_workers, worker_init_fn=worker_init, persistent_workers=False)

    def setup(self, stage: str) -> None:
        if self.model is None:
            module = self.trainer.lightning_module
            self.bind(module.policy, module.negatives, "chosen_corrupt" in module.sequences,
                      "completion" in module.sequences, module.reference)
            check_sample_kind(self.train_urls, "data.train_shards", module.sequences, self.unpair)
        if stage == "fit" and self.preflight_max_bad_fraction is not None and self.preflight_report is None:
            from .inspect import example_stages, preflight  # imported here: inspect imports this module
            self.preflight_report = preflight(self.train_urls, example_stages(self), self.preflight_max_bad_fraction,
                                              self.num_workers)

    def _process(self, batch_size: int, negatives: dict | None = None, digest: bool = False):
        m = self.model
        adapters = dict(m.adapters.items())
        tok = PreferenceTokenizer(m.tokenizer, m.media_token_ids, self.max_length)
        collate = Collator(self.layout, m.tokenizer.pad_token_id, adapters, self.pad_to_multiple_of, negatives, self.seed)
        cache = self.reference.cache if self.reference is not None else None
        return Compose([
            partial(decode, adapters=adapters, digest=digest or cache is not None),  # raw sample -> media tensors
            *([unpair] if self.unpair else []),                    # pair -> two unpaired samples
            partial(check_kind, unpaired=self.unpaired),           # the other kind of sample is bad
            partial(tokenize, tokenizer=tok, adapters=adapters),   # -> token ids, placeholders expanded
            *([partial(attach_reference, cache=cache)] if cache is not None else []),  # stored reference values
            partial(batched, batch_size=batch_size, collate=collate),  # examples -> batches
        ])

    def _loader(self, urls: list[str], batch_size: int, shuffle: bool, negatives: dict | None):
        stream = PreferenceStream(urls, self._process(batch_size, negatives), shuffle, self.shuffle_buffer, self.seed)
        epoch, skip = resume_position(self.trainer) if shuffle else (0, 0)
        loader = EpochLoader(stream, epoch, skip, num_workers=self.num_workers, worker_init_fn=worker_init,
                             persistent_workers=False)
        _, world = rank_and_world()
        if world == 1:
            return loader
        total = self.samples_per_epoch or count_samples(urls)
        n = max(total // (world * batch_size), 1)
        return EqualBatches(loader, n)

    def train_dataloader(self):
        return self._loader(self.train_urls, self.batch_size, True, self.negatives if self.train_negatives else None)

    def val_dataloader(self):
        if not self.val_urls:
            return []
        return self._loader(self.val_urls, self.val_batch_size, False, self.negatives)
