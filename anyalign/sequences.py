"""Sequence kinds: the responses a batch scores, declared once.

A loss term names its inputs ``{policy|reference}_<kind>[_avg]`` (``anyalign/losses.py``); the kind says
what the data pipeline must put in a row for it, so everything else (which rows the collator builds,
whether corrupted media are needed, whether a stored reference value can exist) is derived from these
declarations. A loss that needs a new kind adds one entry here; one that combines the existing flags
needs no other change.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SequenceKind:
    name: str
    #: which response of the example is scored: ``chosen``, ``rejected`` or ``completion`` (unpaired), or
    #: ``responses``: all K responses of a ranked/scored sample (``listwise``)
    response: str
    #: scored under the example's corrupted media (the modality-specific negatives of ``model.negatives``)
    corrupted_media: bool = False
    #: scored after the prompt of the *next* example of the batch (a mismatched pair: KTO's KL baseline),
    #: so its value depends on the batch and cannot be stored per sample
    other_example: bool = False
    #: all of the example's responses, as a ``[B, K]`` input (``-1`` index where an example has fewer than the
    #: batch's largest K; the ``ranks`` data input says which entries exist): the listwise losses' input. A
    #: pair is K = 2 (chosen, rejected); on a K-response sample ``chosen`` is its best response and
    #: ``rejected`` its worst, scored once in the same row (``anyalign/data/collate.py``)
    listwise: bool = False

    @property
    def unpaired(self) -> bool:
        """Exists for unpaired samples (prompt, completion, label) only."""
        return self.response == "completion"

    @property
    def precomputable(self) -> bool:
        return not self.other_example and not self.listwise


SEQUENCES: dict[str, SequenceKind] = {k.name: k for k in (
    SequenceKind("chosen", "chosen"),
    SequenceKind("rejected", "rejected"),
    SequenceKind("completion", "completion"),
    SequenceKind("kl", "completion", other_example=True),
    SequenceKind("chosen_corrupt", "chosen", corrupted_media=True),
    # the rejected response under corrupted media (``conditional_rejected``, this project's extension of mDPO)
    SequenceKind("rejected_corrupt", "rejected", corrupted_media=True),
    SequenceKind("responses", "responses", listwise=True),
)}

#: per-example labels a loss may take from the batch instead of log-probs
DATA_INPUTS = {"desirable": "KTO's label: the completion is desirable (true) or not",
               "ranks": "each response's rank in its sample, [B, K] float: 0 the best, ties share a rank, "
                        "+inf where a sample has fewer than K responses (a pair: [0, 1])"}


@dataclass(frozen=True)
class Needs:
    """What the data must provide for a set of sequence kinds (derived, never configured)."""
    sequences: tuple[str, ...]

    @property
    def kinds(self) -> list[SequenceKind]:
        return [SEQUENCES[s] for s in self.sequences]

    @property
    def unpaired(self) -> bool:
        return any(k.unpaired for k in self.kinds)

    @property
    def train_negatives(self) -> bool:
        """Training batches carry rows under corrupted media."""
        return any(k.corrupted_media for k in self.kinds)

    @property
    def listwise(self) -> bool:
        """A term takes all responses of each sample (``responses``): batches carry them as ``[B, K]``."""
        return any(k.listwise for k in self.kinds)

    @property
    def corrupt_kinds(self) -> tuple[str, ...]:
        """The corrupted-media kinds the terms score: the rows training batches carry under corrupted media."""
        return tuple(k.name for k in self.kinds if k.corrupted_media)

    def extra(self) -> list[SequenceKind]:
        """Kinds beyond the example's own responses, which the collator builds on request."""
        return [k for k in self.kinds if k.corrupted_media or k.other_example]
