"""Preference losses: small pure functions of per-sequence log-probs, and the one registry ``LOSSES``.

Every function returns ``(losses [B], chosen_rewards [B] | None, rejected_rewards [B] | None)``.
Its parameters without defaults are its inputs, named ``{policy|reference}_{sequence}[_avg]``:
``policy_chosen`` is the token-summed log-prob of the chosen response under the policy,
``reference_rejected_avg`` the per-token average under the reference, and so on. Parameters with
defaults are hyper-parameters, set per term in the config. From the signature alone the registry knows
whether a term needs a reference model and which sequences it needs, so the module computes nothing
else, and a misspelt hyper-parameter fails at start-up. Formulas, defaults and sources: METHODS.md.
"""
from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

Out = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]
_INPUT = re.compile(r"^(policy|reference)_([a-z]+(?:_corrupt)?)(_avg)?$")


@dataclass(frozen=True)
class LossSpec:
    fn: Callable[..., Out]
    inputs: tuple[str, ...]
    hyper: dict[str, object]

    @property
    def needs_reference(self) -> bool:
        return any(name.startswith("reference_") for name in self.inputs)

    @property
    def sequences(self) -> frozenset[str]:
        return frozenset(_INPUT.match(name).group(2) for name in self.inputs)


LOSSES: dict[str, LossSpec] = {}


def register(name: str):
    def wrap(fn):
        params = inspect.signature(fn).parameters.values()
        inputs = tuple(p.name for p in params if p.default is inspect.Parameter.empty)
        bad = [n for n in inputs if not _INPUT.match(n)]
        if bad:
            raise TypeError(f"loss {name}: inputs {bad} do not follow {{policy|reference}}_<sequence>[_avg]")
        LOSSES[name] = LossSpec(fn, inputs, {p.name: p.default for p in params if p.default is not inspect.Parameter.empty})
        return fn
    return wrap


def _ratios(pc, pr, rc, rr):
    return pc - rc, pr - rr


@register("sigmoid")
def sigmoid(policy_chosen, policy_rejected, reference_chosen, reference_rejected,
            beta: float = 0.1, label_smoothing: float = 0.0) -> Out:
    """DPO (Rafailov et al. 2023, eq. 7): -log σ(βΔ). With ε > 0, conservative DPO (cDPO):
    -(1-ε) log σ(βΔ) - ε log σ(-βΔ)."""
    rc, rr = _ratios(policy_chosen, policy_rejected, reference_chosen, reference_rejected)
    logits = beta * (rc - rr)
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return losses, beta * rc.detach(), beta * rr.detach()


@register("sft")
def sft(policy_chosen_avg) -> Out:
    """Negative log-likelihood of the chosen response, per token (RPO's and HA-DPO's auxiliary term)."""
    return -policy_chosen_avg, None, None


def validate_terms(terms: list[dict]) -> list[dict]:
    """Check a config's ``losses`` list at start-up; returns normalised ``{name, weight, params}`` dicts."""
    if not terms:
        raise ValueError("model.losses is empty; give at least one term, e.g. [{name: sigmoid}]")
    out = []
    for i, term in enumerate(terms):
        term = dict(term)
        name = term.pop("name", None)
        if name not in LOSSES:
            raise ValueError(f"model.losses[{i}].name={name!r} is not a known loss; known: {sorted(LOSSES)}")
        weight = float(term.pop("weight", 1.0))
        unknown = set(term) - set(LOSSES[name].hyper)
        if unknown:
            raise ValueError(f"model.losses[{i}] ({name}): unknown parameter(s) {sorted(unknown)}; "
                             f"{name} takes {sorted(LOSSES[name].hyper) or 'none'}")
        params = {**LOSSES[name].hyper, **term}
        check = CHECKS.get(name)
        if check:
            check(i, params)
        out.append({"name": name, "weight": weight, "params": params})
    return out


def _check_sigmoid(i: int, p: dict) -> None:
    if not 0.0 <= p["label_smoothing"] < 0.5:
        raise ValueError(f"model.losses[{i}] (sigmoid): label_smoothing must be in [0, 0.5), got {p['label_smoothing']}")


CHECKS: dict[str, Callable[[int, dict], None]] = {"sigmoid": _check_sigmoid}
