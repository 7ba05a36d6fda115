"""PreferenceDataModule: WebDataset shards in, collated preference batches out.

Model-dependent settings bind late: in ``setup`` the LightningModule binds itself (``bind_data``), giving
the tokenizer, the media token ids, the adapters' CPU preprocessing, the sequences its loss terms need and
its reference's data stages, so one data config serves any model. Loaders and the equal-batches rule for
several ranks: ``loading.py``.
"""
from __future__ import annotations

import logging
from functools import partial

import lightning as L

from ..sequences import SEQUENCES
from .collate import LAYOUTS, Collator
from .negatives import reliance_spec
from .loading import (Compose, EpochLoader, EqualBatches, check_sample_kind, count_samples, expand_shards,
                      idle_readers, resume_position)
from .scan import example_stages, preflight
from .pipeline import (Deferred, PreferenceStream, batched, check_kind, decode, pack_order, rank_and_world, route_online,
                       tokenize, unpair, worker_init)
from .template import PreferenceTokenizer

log = logging.getLogger("anyalign")


class PreferenceDataModule(L.LightningDataModule):
    def __init__(
        self,
        train_shards: str | list[str],
        val_shards: str | list[str] | None = None,
        test_shards: str | list[str] | None = None,
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
        packing: bool | int = False,
        online_fraction: float = 0.0,
    ):
        """
        Args:
            train_shards: training shards: a path, a brace pattern (``data/train-{000..009}.tar``) or a list.
            val_shards: held-out shards for validation (reward accuracy on pairs never trained on).
            test_shards: held-out shards for ``python -m anyalign test`` (the same metrics as validation).
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
            packing: packed rows (padding-free): ``true`` puts several pairs (each a prompt and its responses,
                in either layout) into one row of up to ``max_length`` tokens, an integer into rows of up to that
                many tokens; each pair attends only to itself and its positions restart at 0, so its log-probs
                are those of its own row. ``batch_size`` still counts pairs: each batch's pairs go into as few
                rows as fit (a pair longer than a row gets one of its own). Models that build their own masks
                (pretrained families) train unpacked, with a warning.
            online_fraction: online and mixed DPO: the share of training samples whose responses are sampled
                from the policy during the step and ranked by ``model.online``'s reward (0: offline pairs only,
                1: all online, 0.5: half and half, spread evenly through each batch). Samples with only a prompt
                (and an ``answer`` for a rule-based reward) are always online.
        """
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        if layout not in LAYOUTS:
            raise ValueError(f"data.layout={layout!r} is not one of {LAYOUTS}")
        if max_length < 2:
            raise ValueError(f"data.max_length must be >= 2, got {max_length}")
        if packing is not True and packing is not False and (not isinstance(packing, int) or packing < 2):
            raise ValueError(f"data.packing must be true, false or a row length in tokens >= 2, got {packing!r}")
        if isinstance(online_fraction, bool) or not isinstance(online_fraction, (int, float)) or \
                not 0 <= online_fraction <= 1:
            raise ValueError(f"data.online_fraction must be a number in [0, 1], got {online_fraction!r}")
        if preflight_max_bad_fraction is not None and not 0 <= preflight_max_bad_fraction <= 1:
            raise ValueError(f"data.preflight_max_bad_fraction must be in [0, 1], got {preflight_max_bad_fraction}")
        self.train_urls = expand_shards(train_shards, "data.train_shards")
        self.val_urls = expand_shards(val_shards, "data.val_shards")
        self.test_urls = expand_shards(test_shards, "data.test_shards")
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.num_workers, self.shuffle_buffer, self.max_length = num_workers, shuffle_buffer, max_length
        self.layout, self.pad_to_multiple_of = layout, pad_to_multiple_of
        self.packing, self.online_fraction = packing, float(online_fraction)
        self.samples_per_epoch, self.seed, self.unpair = samples_per_epoch, seed, unpair
        self.model, self.reference_stages = None, []
        self.negatives, self.train_negatives, self.unpaired, self.listwise = None, False, False, False
        self.held_out_negatives = None
        self.corrupt_kinds: tuple[str, ...] = ("chosen_corrupt",)
        self.preflight_max_bad_fraction, self.preflight_report = preflight_max_bad_fraction, None

    def bind(self, model, negatives: dict | None = None, needs=None, reference=None) -> None:
        """Take the tokenizer and the adapters' preprocessing from the model (a MultimodalLM), the validated
        negatives spec, and what the loss terms need (``anyalign.sequences.Needs``): training batches carry
        corrupted-media rows only if a term scores them, held-out batches always (to measure media reliance:
        with the configured operators, else each adapter's ``reliance_operator``). ``reference`` (a ``Reference``) checks itself against this data and may
        add pipeline stages (a precomputed cache's lookup), before any training."""
        self.model, self.negatives = model, negatives
        # held-out batches always carry a corrupted-media row per pair, so media_reliance is always measured:
        # the configured operators, else each adapter's own reliance operator
        self.held_out_negatives = negatives or reliance_spec(dict(model.adapters.items()))
        self.train_negatives = bool(needs and needs.train_negatives)
        self.unpaired = bool(needs and needs.unpaired)  # the loss terms train on unpaired samples (KTO)
        self.listwise = bool(needs and needs.listwise)  # a term takes all K responses ([B, K] inputs)
        # the corrupted-media rows training batches carry (those the terms score); held-out batches add
        # chosen_corrupt, which media_reliance reads
        self.corrupt_kinds = (needs.corrupt_kinds if needs else ()) or ("chosen_corrupt",)
        reason = model.shared_layout_unsupported_reason() if self.layout == "shared" else None
        if reason is not None:
            log.warning("data.layout=shared needs a 4-D attention mask, but %s: training with data.layout="
                        "concatenated (prompt and media duplicated per response)", reason)
            self.layout = "concatenated"
        if self.packing:
            why = (model.shared_layout_unsupported_reason() if getattr(model, "supports_packing", False) else
                   f"{type(model).__name__} builds its own attention masks and does not take packed rows")
            if why is not None:
                log.warning("data.packing needs packed rows kept apart by a 4-D attention mask, but %s: training "
                            "unpacked rows (data.packing: false)", why)
                self.packing = False
        self.reference_stages = reference.bind_data(self) if reference is not None else []

    def reference_fingerprint(self, sequences: list[str]) -> dict:
        """The data settings precomputed reference log-probs depend on (the rest is per sample)."""
        fp = {"max_length": self.max_length, "unpair": self.unpair}
        if any(SEQUENCES[s].corrupted_media for s in sequences):  # their corruption is drawn from (seed, key)
            fp |= {"seed": self.seed, "negatives": {m: [list(x) for x in ops] for m, ops in (self.negatives or {}).items()}}
        return fp

    @property
    def pack_length(self) -> int | None:
        """Tokens per packed row, or None when rows are not packed."""
        if not self.packing:
            return None
        return self.max_length if self.packing is True else int(self.packing)

    def all_urls(self) -> list[str]:
        return list(dict.fromkeys(self.train_urls + self.val_urls + self.test_urls))

    def precompute_dataloader(self):
        """Every training and held-out shard once, in order, with each sample's digest (for precompute)."""
        negatives = self.negatives if self.train_negatives else None
        stream = PreferenceStream(self.all_urls(), self._process(self.val_batch_size, negatives, digest=True),
                                  False, 1, self.seed)
        return EpochLoader(stream, num_workers=self.num_workers, worker_init_fn=worker_init, persistent_workers=False)

    def setup(self, stage: str) -> None:
        if self.model is None:
            module = self.trainer.lightning_module
            module.bind_data(self)
            check_sample_kind(self.train_urls, "data.train_shards", self.unpaired, self.unpair)
        if stage == "fit":
            _, world = rank_and_world()
            idle = idle_readers(len(self.train_urls), world, self.num_workers)
            if idle:
                log.warning("data.train_shards: %s", idle)
        if stage == "fit" and self.preflight_max_bad_fraction is not None and self.preflight_report is None:
            self.preflight_report = preflight(self.train_urls, example_stages(self), self.preflight_max_bad_fraction,
                                              self.num_workers)

    def tokenizer(self):
        """The model's preference tokenizer at ``max_length`` (a pretrained family brings its own: its processor
        expands the placeholders and processes the media)."""
        m = self.model
        make = getattr(m, "preference_tokenizer", None)
        return make(self.max_length) if make else PreferenceTokenizer(m.tokenizer, m.media_token_ids, self.max_length)

    def collator(self, negatives: dict | None = None, held_out: bool = False) -> Collator:
        """Held-out batches add ``chosen_corrupt`` rows, which media_reliance reads; training batches carry the
        corrupted-media rows the terms score."""
        kinds = tuple(dict.fromkeys(("chosen_corrupt",) * held_out + self.corrupt_kinds))
        return Collator(self.layout, self.model.tokenizer.pad_token_id, dict(self.model.adapters.items()),
                        self.pad_to_multiple_of, negatives, self.seed, self.pack_length, self.listwise, kinds)

    def train_collator(self) -> Collator:
        """What collates a training batch (in the training step for online batches: ``pipeline.Deferred``)."""
        return self.collator(self.negatives if self.train_negatives else None)

    def _process(self, batch_size: int, negatives: dict | None = None, digest: bool = False, online: bool = False,
                 held_out: bool = False):
        adapters = dict(self.model.adapters.items())
        tok, pack = self.tokenizer(), self.pack_length
        online = online and self.online_fraction > 0  # online batches are collated in the training step
        collate = Deferred() if online else self.collator(negatives, held_out)
        return Compose([
            partial(decode, adapters=adapters, digest=digest or bool(self.reference_stages),  # raw sample -> media tensors
                    prompt_only=online),
            *([unpair] if self.unpair else []),                    # pair -> two unpaired samples
            partial(check_kind, unpaired=self.unpaired),           # the other kind of sample is bad
            *([partial(route_online, fraction=self.online_fraction)] if online else []),  # responses from the policy
            partial(tokenize, tokenizer=tok, adapters=adapters),   # -> token ids, placeholders expanded
            *self.reference_stages,                                # e.g. stored reference values
            *([partial(pack_order, batch_size=batch_size, capacity=pack)]  # batches that fill packed rows
              if pack and batch_size > 1 else []),
            partial(batched, batch_size=batch_size, collate=collate),  # examples -> batches
        ])

    def _loader(self, urls: list[str], batch_size: int, shuffle: bool, negatives: dict | None, online: bool = False):
        stream = PreferenceStream(urls, self._process(batch_size, negatives, online=online, held_out=not shuffle), shuffle,
                                  self.shuffle_buffer, self.seed)
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
        return self._loader(self.train_urls, self.batch_size, True, self.negatives if self.train_negatives else None,
                            online=True)

    def val_dataloader(self):
        if not self.val_urls:
            return []
        return self._loader(self.val_urls, self.val_batch_size, False, self.held_out_negatives)

    def test_dataloader(self):
        if not self.test_urls:
            raise ValueError("python -m anyalign test needs data.test_shards (held-out shards), e.g. "
                             "--data.test_shards 'data/test-{000..001}.tar'")
        return self._loader(self.test_urls, self.val_batch_size, False, self.held_out_negatives)
