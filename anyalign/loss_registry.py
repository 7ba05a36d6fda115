"""The loss registry: ``LOSSES``, ``register`` and what every term module shares (input names, ``LossSpec``, the
log-ratio helpers). The terms themselves are in ``losses.py``, ``losses_listwise.py`` and ``losses_conditional.py``;
importing ``anyalign.losses`` registers all of them. Conventions: ``anyalign/losses.py``'s docstring."""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch

from .sequences import DATA_INPUTS, SEQUENCES

Out = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]
STATE_INPUTS = {"reward_shift": "RunningMean"}  # running state a term keeps across steps (see RunningMean)


def parse_input(name: str) -> tuple[str, str, str] | None:
    """``reference_chosen_avg`` -> (``reference``, ``chosen``, ``avg``), ``policy_chosen`` -> (..., ``sum``),
    ``policy_chosen_tokens`` -> (..., ``tokens``); None if not a sequence input (``reference_*_tokens`` is
    not one: counts do not depend on the model, and asking the reference for them would build one)."""
    source, _, rest = name.partition("_")
    seq, kind = rest, "sum"
    for suffix in ("avg", "tokens"):
        if rest.endswith("_" + suffix):
            seq, kind = rest.removesuffix("_" + suffix), suffix
    if source not in ("policy", "reference") or seq not in SEQUENCES or (source, kind) == ("reference", "tokens"):
        return None
    return source, seq, kind


def select_input(kind: str, logps: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """One sequence input from a sequence's log-prob sums and token counts (``kind`` from ``parse_input``)."""
    if kind == "avg":
        return logps / tokens.clamp(min=1)
    return tokens if kind == "tokens" else logps


@dataclass(frozen=True)
class LossSpec:
    fn: Callable[..., Out]
    inputs: tuple[str, ...]
    hyper: dict[str, object]

    @property
    def logp_inputs(self) -> list[tuple[str, str, str]]:
        return [p for p in map(parse_input, self.inputs) if p is not None]

    @property
    def needs_reference(self) -> bool:
        return any(source == "reference" for source, _, _ in self.logp_inputs)

    @property
    def sequences(self) -> frozenset[str]:
        return frozenset(seq for _, seq, _ in self.logp_inputs)

    @property
    def reference_sequences(self) -> frozenset[str]:
        return frozenset(seq for source, seq, _ in self.logp_inputs if source == "reference")

    @property
    def compares(self) -> tuple[str, ...]:
        """The sequences its two rewards belong to, in order: (chosen, rejected) for a preference term,
        (chosen, chosen_corrupt) for mDPO's conditional term."""
        return tuple(dict.fromkeys(seq for _, seq, _ in self.logp_inputs))

    @property
    def data_inputs(self) -> tuple[str, ...]:
        return tuple(n for n in self.inputs if n in DATA_INPUTS)

    @property
    def state(self) -> tuple[str, ...]:
        return tuple(n for n in self.inputs if n in STATE_INPUTS)

    def bind(self, params: dict) -> LossSpec:
        """The spec a configured term runs with. With ``reference_free`` set its reference inputs are dropped
        (the function receives None for them and reads them as 0), so the term needs no reference model and
        the module asks for no reference log-probs."""
        if not params.get("reference_free"):
            return self
        refs = [n for n in self.inputs if (p := parse_input(n)) and p[0] == "reference"]
        return LossSpec(functools.partial(self.fn, **dict.fromkeys(refs)),
                        tuple(n for n in self.inputs if n not in refs), self.hyper)


LOSSES: dict[str, LossSpec] = {}


def register(name: str):
    def wrap(fn):
        params = inspect.signature(fn).parameters.values()
        inputs = tuple(p.name for p in params if p.default is inspect.Parameter.empty)
        bad = [n for n in inputs if not (parse_input(n) or n in DATA_INPUTS or n in STATE_INPUTS)]
        if bad:
            raise TypeError(f"loss {name}: inputs {bad} are not {{policy|reference}}_<sequence>[_avg] or "
                            f"policy_<sequence>_tokens with a "
                            f"sequence kind of {sorted(SEQUENCES)}, nor one of {sorted(DATA_INPUTS)} or "
                            f"{sorted(STATE_INPUTS)}")
        LOSSES[name] = LossSpec(fn, inputs, {p.name: p.default for p in params
                                             if p.default is not inspect.Parameter.empty})
        return fn
    return wrap


def _ratios(pc, pr, rc, rr, reference_free: bool = False):
    """(r_w, r_l); reference-free: the reference log-probs are read as 0 (and may be None)."""
    if reference_free:
        return pc, pr
    return pc - rc, pr - rr


def _rewards(beta, rc, rr):
    return beta * rc.detach(), beta * rr.detach()
