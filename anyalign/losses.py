"""Preference losses: small pure functions of per-sequence log-probs, and the one registry ``LOSSES``.

Every function returns ``(losses [B], chosen_rewards [B] | None, rejected_rewards [B] | None)``; the
rewards are both tensors or both None. Its parameters without defaults are its inputs, named
``{policy|reference}_{sequence}[_avg]``: ``policy_chosen`` is the token-summed log-prob of the chosen
response under the policy, ``reference_rejected_avg`` the per-token average under the reference, and so
on; the sequence kinds are declared in ``anyalign/sequences.py``. The only other inputs allowed are the
per-example labels in ``DATA_INPUTS`` (KTO's ``desirable``) and a term's running state (``reward_shift``:
BCO's running mean, kept by the module and checkpointed).
Parameters with defaults are hyper-parameters, set per term in the config. From the signature alone the
registry knows whether a term needs a reference model and which sequences it needs, so the module
computes nothing else, and a misspelt hyper-parameter fails at start-up. Formulas, defaults and
sources: ``docs/methods.md``. Notation: r = policy − reference log-ratio, Δ = r_w − r_l.

Dense token weights (DDPO) need no loss here: the log-probs arrive already token-weighted.
Departures from the papers: KTO's z0 is the mean over this batch (one device) rather than over all
processes; ORPO clamps the average log-prob (see ``_log_odds``); ``anchor`` and ``kto`` report no rewards.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .sequences import DATA_INPUTS, SEQUENCES

Out = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]
STATE_INPUTS = {"reward_shift": "RunningMean"}  # running state a term keeps across steps (see RunningMean)


def parse_input(name: str) -> tuple[str, str, bool] | None:
    """``reference_chosen_avg`` -> (``reference``, ``chosen``, True); None if not a log-prob input."""
    source, _, rest = name.partition("_")
    avg = rest.endswith("_avg")
    seq = rest.removesuffix("_avg")
    if source not in ("policy", "reference") or seq not in SEQUENCES:
        return None
    return source, seq, avg


@dataclass(frozen=True)
class LossSpec:
    fn: Callable[..., Out]
    inputs: tuple[str, ...]
    hyper: dict[str, object]

    @property
    def logp_inputs(self) -> list[tuple[str, str, bool]]:
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


LOSSES: dict[str, LossSpec] = {}


def register(name: str):
    def wrap(fn):
        params = inspect.signature(fn).parameters.values()
        inputs = tuple(p.name for p in params if p.default is inspect.Parameter.empty)
        bad = [n for n in inputs if not (parse_input(n) or n in DATA_INPUTS or n in STATE_INPUTS)]
        if bad:
            raise TypeError(f"loss {name}: inputs {bad} are not {{policy|reference}}_<sequence>[_avg] with a "
                            f"sequence kind of {sorted(SEQUENCES)}, nor one of {sorted(DATA_INPUTS)} or "
                            f"{sorted(STATE_INPUTS)}")
        LOSSES[name] = LossSpec(fn, inputs, {p.name: p.default for p in params if p.default is not inspect.Parameter.empty})
        return fn
    return wrap


def _ratios(pc, pr, rc, rr):
    return pc - rc, pr - rr


def _rewards(beta, rc, rr):
    return beta * rc.detach(), beta * rr.detach()


# ---- pairwise, with a reference ----
@register("sigmoid")
def sigmoid(policy_chosen, policy_rejected, reference_chosen, reference_rejected,
            beta: float = 0.1, label_smoothing: float = 0.0) -> Out:
    """DPO (Rafailov et al. 2023, eq. 7): -log σ(βΔ). With ε > 0, conservative DPO (cDPO):
    -(1-ε) log σ(βΔ) - ε log σ(-βΔ)."""
    rc, rr = _ratios(policy_chosen, policy_rejected, reference_chosen, reference_rejected)
    logits = beta * (rc - rr)
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return losses, *_rewards(beta, rc, rr)


@register("robust")
def robust(policy_chosen, policy_rejected, reference_chosen, reference_rejected,
           beta: float = 0.1, label_smoothing: float = 0.0) -> Out:
    """Robust DPO (Chowdhury et al. 2024): [-(1-ε) log σ(βΔ) + ε log σ(-βΔ)] / (1-2ε), an unbiased
    loss under labels flipped with probability ε ∈ [0, 0.5). ε = 0 is DPO."""
    rc, rr = _ratios(policy_chosen, policy_rejected, reference_chosen, reference_rejected)
    logits = beta * (rc - rr)
    eps = label_smoothing
    losses = (-(1 - eps) * F.logsigmoid(logits) + eps * F.logsigmoid(-logits)) / (1 - 2 * eps)
    return losses, *_rewards(beta, rc, rr)


@register("ipo")
def ipo(policy_chosen_avg, policy_rejected_avg, reference_chosen_avg, reference_rejected_avg,
        beta: float = 0.1) -> Out:
    """IPO (Azar et al. 2024, eq. 17): (Δ̄ - 1/(2β))², β = τ, with Δ̄ from per-token average log-ratios
    (the length normalisation TRL confirmed with the authors). Rewards are β·average log-ratios."""
    rc, rr = _ratios(policy_chosen_avg, policy_rejected_avg, reference_chosen_avg, reference_rejected_avg)
    return (rc - rr - 1 / (2 * beta)) ** 2, *_rewards(beta, rc, rr)


@register("hinge")
def hinge(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta: float = 0.1) -> Out:
    """SLiC hinge in its RSO form (Zhao et al. 2023; Liu et al. 2024): max(0, 1 - βΔ), 1/β the margin."""
    rc, rr = _ratios(policy_chosen, policy_rejected, reference_chosen, reference_rejected)
    return torch.relu(1 - beta * (rc - rr)), *_rewards(beta, rc, rr)


@register("apo_zero")
def apo_zero(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta: float = 0.1) -> Out:
    """APO-zero (D'Oosterlinck et al. 2024): (1 - σ(β r_w)) + σ(β r_l); raises the winner, lowers
    the loser. Use when the winners are better than the model's outputs."""
    rc, rr = _ratios(policy_chosen, policy_rejected, reference_chosen, reference_rejected)
    losses = (1 - torch.sigmoid(beta * rc)) + torch.sigmoid(beta * rr)
    return losses, *_rewards(beta, rc, rr)


@register("apo_down")
def apo_down(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta: float = 0.1) -> Out:
    """APO-down (D'Oosterlinck et al. 2024): σ(β r_w) + (1 - σ(βΔ)); lowers both, the loser more.
    Use when the model's outputs already beat the winners."""
    rc, rr = _ratios(policy_chosen, policy_rejected, reference_chosen, reference_rejected)
    losses = torch.sigmoid(beta * rc) + (1 - torch.sigmoid(beta * (rc - rr)))
    return losses, *_rewards(beta, rc, rr)


@register("nca_pair")
def nca_pair(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta: float = 0.1) -> Out:
    """NCA, pairwise (Chen et al. 2024, with one negative):
    -log σ(β r_w) - ½ log σ(-β r_w) - ½ log σ(-β r_l)."""
    rc, rr = _ratios(policy_chosen, policy_rejected, reference_chosen, reference_rejected)
    losses = -F.logsigmoid(beta * rc) - 0.5 * F.logsigmoid(-beta * rc) - 0.5 * F.logsigmoid(-beta * rr)
    return losses, *_rewards(beta, rc, rr)


class RunningMean(torch.nn.Module):
    """A running mean kept in buffers, so it is checkpointed with the module and restored on resume. It
    moves only in training mode; under DDP each update averages the ranks' values first (every rank
    computes every term each step, so the all-reduce is always matched)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def update(self, value: torch.Tensor) -> torch.Tensor:
        if self.training:
            value = value.detach().double().mean()
            import torch.distributed as dist
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                value = value.clone()
                dist.all_reduce(value)
                value /= dist.get_world_size()
            self.count += 1
            self.mean += (value - self.mean) / self.count
        return self.mean


@register("bco_pair")
def bco_pair(policy_chosen, policy_rejected, reference_chosen, reference_rejected, reward_shift,
             beta: float = 0.1) -> Out:
    """BCO on pairs (Jung et al. 2024, eq. 8): -log σ(β r_w - δ) - log σ(-(β r_l - δ)), with δ the running
    mean of the rewards β r_w and β r_l, updated with this batch before it is used (as TRL's DPOTrainer did
    with its RunningMoments; its later refactored ``bco_pair`` drops δ, see docs/methods.md).
    ``reward_shift`` is the term's ``RunningMean``, the module's state (checkpointed). Departure from BCO's
    own trainer: no density-ratio (UDM) weights."""
    rc, rr = _ratios(policy_chosen, policy_rejected, reference_chosen, reference_rejected)
    delta = reward_shift.update(torch.cat([beta * rc, beta * rr])).to(rc.dtype)
    losses = -F.logsigmoid(beta * rc - delta) - F.logsigmoid(-(beta * rr - delta))
    return losses, *_rewards(beta, rc, rr)


@register("sppo_hard")
def sppo_hard(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta: float = 0.1) -> Out:
    """SPPO with hard labels (Wu et al. 2024, eq. 4.7 of Algorithm 1 with P = 1 for the winner and 0 for
    the loser; TRL's form): (r_w - 1/(2β))² + (r_l + 1/(2β))²."""
    rc, rr = _ratios(policy_chosen, policy_rejected, reference_chosen, reference_rejected)
    return (rc - 0.5 / beta) ** 2 + (rr + 0.5 / beta) ** 2, *_rewards(beta, rc, rr)


@register("dpop")
def dpop(policy_chosen, policy_rejected, reference_chosen, reference_rejected,
         beta: float = 0.1, dpop_lambda: float = 50.0) -> Out:
    """DPO-Positive (Pal et al. 2024, Smaug): -log σ(β[Δ - λ·max(0, log π_ref(y_w) - log πθ(y_w))]);
    the penalty stops the chosen likelihood falling below the reference's. λ = 50 is a third-party
    default (the paper's form is unverified here; see docs/methods.md)."""
    rc, rr = _ratios(policy_chosen, policy_rejected, reference_chosen, reference_rejected)
    penalty = torch.relu(reference_chosen - policy_chosen)
    return -F.logsigmoid(beta * (rc - rr - dpop_lambda * penalty)), *_rewards(beta, rc, rr)


# ---- mDPO's image-conditioned terms (Wang et al. 2024) ----
@register("conditional")
def conditional(policy_chosen, reference_chosen, policy_chosen_corrupt, reference_chosen_corrupt,
                beta: float = 0.1) -> Out:
    """mDPO CoPO (Wang et al. 2024): -log σ(β[r(y_w | m) - r(y_w | m̃)]); same response, clean
    vs corrupted modality input. Rewards: (β r(y_w | m), β r(y_w | m̃))."""
    rc, rcc = _ratios(policy_chosen, policy_chosen_corrupt, reference_chosen, reference_chosen_corrupt)
    return -F.logsigmoid(beta * (rc - rcc)), *_rewards(beta, rc, rcc)


@register("anchor")
def anchor(policy_chosen, reference_chosen, beta: float = 0.1, delta: float = 0.0) -> Out:
    """mDPO AncPO (Wang et al. 2024): -log σ(β r_w - δ), keeping the chosen reward above δ.
    Returns no rewards (there is no rejected side to compare with)."""
    return -F.logsigmoid(beta * (policy_chosen - reference_chosen) - delta), None, None


# ---- reference-free ----
@register("simpo")
def simpo(policy_chosen_avg, policy_rejected_avg, beta: float = 2.0, gamma: float = 0.5) -> Out:
    """SimPO (Meng et al. 2024, eq. 6): -log σ(β·avg_w - β·avg_l - γ), γ the absolute margin
    (γ/β = 0.25 in the authors' config). Rewards are β·average log-probs."""
    losses = -F.logsigmoid(beta * (policy_chosen_avg - policy_rejected_avg) - gamma)
    return losses, *_rewards(beta, policy_chosen_avg, policy_rejected_avg)


_AVG_LOGP_MAX = -1e-6  # average log-prob ceiling for ORPO: p ≤ 1 - 1e-6, so log odds ≤ ~13.8, never inf


def _log_odds(avg: torch.Tensor) -> torch.Tensor:
    """log(p / (1 - p)) with p = exp(avg). At avg → 0 (p → 1) log1p(-exp(avg)) is -inf; the clamp
    keeps it finite, at the cost of no gradient for a sequence the policy already predicts surely."""
    avg = avg.clamp(max=_AVG_LOGP_MAX)
    return avg - torch.log1p(-torch.exp(avg))


@register("orpo")
def orpo(policy_chosen_avg, policy_rejected_avg, beta: float = 0.1) -> Out:
    """ORPO (Hong et al. 2024, eqs. 6-7): NLL(y_w) - λ·log σ(log odds(y_w) - log odds(y_l)), with
    odds = p/(1-p), p = exp(average token log-prob), λ = ``beta``. Rewards are β·average log-probs."""
    ratio = F.logsigmoid(_log_odds(policy_chosen_avg) - _log_odds(policy_rejected_avg))
    return -policy_chosen_avg - beta * ratio, *_rewards(beta, policy_chosen_avg, policy_rejected_avg)


@register("sft")
def sft(policy_chosen_avg) -> Out:
    """Negative log-likelihood of the chosen response, per token (RPO's auxiliary term; HA-DPO's runs on
    separate SFT data instead, see docs/methods.md)."""
    return -policy_chosen_avg, None, None


# ---- unpaired ----
@register("kto")
def kto(policy_completion, reference_completion, policy_kl, reference_kl, desirable,
        beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> Out:
    """KTO (Ethayarajh et al. 2024): z0 = max(0, mean(policy_kl - reference_kl)), detached, over
    mismatched (prompt, completion) pairs; desirable rows λ_D(1 - σ(β(r - z0))), undesirable rows
    λ_U(1 - σ(β(z0 - r))). ``desirable`` is a bool [B]. z0 averages this batch on this device only.
    Returns no rewards: chosen and rejected rows differ per batch, so they do not fit [B] pairs."""
    z0 = (policy_kl - reference_kl).mean().clamp(min=0).detach()
    r = policy_completion - reference_completion
    losses = torch.where(desirable, desirable_weight * (1 - torch.sigmoid(beta * (r - z0))),
                         undesirable_weight * (1 - torch.sigmoid(beta * (z0 - r))))
    return losses, None, None


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
        if "beta" in params and not params["beta"] > 0:  # every β divides or scales a log-ratio
            raise ValueError(f"model.losses[{i}] ({name}): beta must be > 0, got {params['beta']}")
        check = CHECKS.get(name)
        if check:
            check(i, params)
        out.append({"name": name, "weight": weight, "params": params})
    return out


def _check_label_smoothing(name: str) -> Callable[[int, dict], None]:
    def check(i: int, p: dict) -> None:
        if not 0.0 <= p["label_smoothing"] < 0.5:
            raise ValueError(f"model.losses[{i}] ({name}): label_smoothing must be in [0, 0.5), "
                             f"got {p['label_smoothing']}")
    return check


CHECKS: dict[str, Callable[[int, dict], None]] = {
    "sigmoid": _check_label_smoothing("sigmoid"),
    "robust": _check_label_smoothing("robust"),  # ε = 0.5 divides by zero; above it the loss inverts
}
