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
    #: which response of the example is scored: ``chosen``, ``rejected`` or ``completion`` (unpaired)
    response: str
    #: scored under the example's corrupted media (the modality-specific negatives of ``model.negatives``)
    corrupted_media: bool = False
    #: scored after the prompt of the *next* example of the batch (a mismatched pair: KTO's KL baseline),
    #: so its value depends on the batch and cannot be stored per sample
    other_example: bool = False

    @property
    def unpaired(self) -> bool:
        """Exists for unpaired samples (prompt, completion, label) only."""
        return self.response == "completion"

    @property
    def precomputable(self) -> bool:
        return not self.other_example


SEQUENCES: dict[str, SequenceKind] = {k.name: k for k in (
    SequenceKind("chosen", "chosen"),
    SequenceKind("rejected", "rejected"),
    SequenceKind("completion", "completion"),
    SequenceKind("kl", "completion", other_example=True),
    SequenceKind("chosen_corrupt", "chosen", corrupted_media=True),
)}

#: per-example labels a loss may take from the batch instead of log-probs
DATA_INPUTS = {"desirable": "KTO's label: the completion is desirable (true) or not"}


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

    def extra(self) -> list[SequenceKind]:
        """Kinds beyond the example's own responses, which the collator builds on request."""
        return [k for k in self.kinds if k.corrupted_media or k.other_example]
