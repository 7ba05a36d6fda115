"""Preference losses: small pure functions of per-sequence log-probs, and the one registry ``LOSSES``.

Every function returns ``(losses [B], chosen_rewards [B] | None, rejected_rewards [B] | None)``; the
rewards are both tensors or both None. Its parameters without defaults are its inputs, named
``{policy|reference}_{sequence}[_avg]``: ``policy_chosen`` is the token-summed log-prob of the chosen
response under the policy, ``reference_rejected_avg`` the per-token average under the reference, and so
on; ``policy_chosen_tokens`` is the chosen response's token count (a count is the same under both
models, so only the policy's is an input). The sequence kinds are declared in ``anyalign/sequences.py``.
The only other inputs allowed are the per-example labels in ``DATA_INPUTS`` (KTO's ``desirable``) and a
term's running state (``reward_shift``: BCO's running mean, kept by the module and checkpointed).
Parameters with defaults are hyper-parameters, set per term in the config. From the signature alone the
registry knows whether a term needs a reference model and which sequences it needs, so the module
computes nothing else, and a misspelt hyper-parameter fails at start-up. Formulas, defaults and
sources: ``docs/methods.md``. Notation: r = policy − reference log-ratio, Δ = r_w − r_l.
The listwise terms (``losses_listwise.py``) and mDPO's media-conditioned terms (``losses_conditional.py``) live in
modules of their own, imported here so that ``LOSSES`` holds every term once ``anyalign.losses`` is imported.

``reference_free: true`` on a pairwise term reads every reference log-prob as 0 (r = log πθ): the
configured term's spec (``LossSpec.bind``) drops its reference inputs, so no reference model is built for it.

Dense token weights (DDPO) need no loss here: the log-probs arrive already token-weighted.
Departures from the papers: KTO's z0 is the mean over this batch (one device) rather than over all
processes; ORPO clamps the average log-prob (see ``_log_odds``); ``anchor`` and ``kto`` report no rewards.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from .loss_registry import (LOSSES, STATE_INPUTS, LossSpec, Out, _ratios, _rewards, parse_input,  # noqa: F401
                            register, select_input)
from .sequences import DATA_INPUTS, SEQUENCES  # noqa: F401  (DATA_INPUTS: re-exported for the module)

F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")


def _f_delta(rc: torch.Tensor, rr: torch.Tensor, f_divergence: str, f_alpha: float) -> torch.Tensor:
    """f'(u_w) - f'(u_l) with u = πθ/π_ref = exp(r), constants dropped (f-DPO, Wang et al. 2023):
    reverse KL f'(u) = log u + 1 (DPO's Δ); forward KL 1 - 1/u; Jensen-Shannon log(2u / (1 + u)) =
    log 2 + log σ(r); α-divergence (1 - u^-α)/α (α → 0 is reverse KL, α = 1 forward KL). The exponent of u^-α
    is capped (at log(dtype max) - 10, computed in float32 at least) so a far-off ratio stays finite, as TRL
    caps it; the capped side then carries no gradient."""
    if f_divergence == "reverse_kl":
        return rc - rr
    if f_divergence == "js_divergence":
        return F.logsigmoid(rc) - F.logsigmoid(rr)
    alpha = 1.0 if f_divergence == "forward_kl" else f_alpha
    if f_divergence not in ("forward_kl", "alpha_divergence"):
        raise ValueError(f"f_divergence={f_divergence!r} is not one of {F_DIVERGENCES}")
    dtype = torch.promote_types(rc.dtype, torch.float32)
    cap = math.log(torch.finfo(dtype).max) - 10
    pow_w = torch.exp((-alpha * rc.to(dtype)).clamp(max=cap))  # u_w^-α
    pow_l = torch.exp((-alpha * rr.to(dtype)).clamp(max=cap))
    return (pow_l - pow_w) / alpha


# ---- pairwise, with a reference ----
@register("sigmoid")
def sigmoid(policy_chosen, policy_rejected, reference_chosen, reference_rejected,
            beta: float = 0.1, label_smoothing: float = 0.0, f_divergence: str = "reverse_kl",
            f_alpha: float = 0.5, reference_free: bool = False) -> Out:
    """DPO (Rafailov et al. 2023, eq. 7): -log σ(βΔ). With ε > 0, conservative DPO (cDPO):
    -(1-ε) log σ(βΔ) - ε log σ(-βΔ). f-DPO (Wang et al. 2023; TRL's ``f_divergence_type``): Δ replaced by
    f'(u_w) - f'(u_l), u = exp(r), for ``f_divergence`` ``forward_kl``, ``js_divergence`` or
    ``alpha_divergence`` (α = ``f_alpha``), see ``_f_delta``; ``reverse_kl`` is DPO. Rewards stay β r."""
    rc, rr = _ratios(policy_chosen, policy_rejected, reference_chosen, reference_rejected, reference_free)
    logits = beta * _f_delta(rc, rr, f_divergence, f_alpha)
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return losses, *_rewards(beta, rc, rr)


@register("robust")
def robust(policy_chosen, policy_rejected, reference_chosen, reference_rejected,
           beta: float = 0.1, label_smoothing: float = 0.0, reference_free: bool = False) -> Out:
    """Robust DPO (Chowdhury et al. 2024): [-(1-ε) log σ(βΔ) + ε log σ(-βΔ)] / (1-2ε), an unbiased
    loss under labels flipped with probability ε ∈ [0, 0.5). ε = 0 is DPO."""
    rc, rr = _ratios(policy_chosen, policy_rejected, reference_chosen, reference_rejected, reference_free)
    logits = beta * (rc - rr)
    eps = label_smoothing
    losses = (-(1 - eps) * F.logsigmoid(logits) + eps * F.logsigmoid(-logits)) / (1 - 2 * eps)
    return losses, *_rewards(beta, rc, rr)


@register("ipo")
def ipo(policy_chosen_avg, policy_rejected_avg, reference_chosen_avg, reference_rejected_avg,
        beta: float = 0.1, reference_free: bool = False) -> Out:
    """IPO (Azar et al. 2024, eq. 17): (Δ̄ - 1/(2β))², β = τ, with Δ̄ from per-token average log-ratios
    (the length normalisation TRL confirmed with the authors). Rewards are β·average log-ratios."""
    rc, rr = _ratios(policy_chosen_avg, policy_rejected_avg, reference_chosen_avg, reference_rejected_avg,
                     reference_free)
    return (rc - rr - 1 / (2 * beta)) ** 2, *_rewards(beta, rc, rr)


@register("hinge")
def hinge(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta: float = 0.1,
          reference_free: bool = False) -> Out:
    """SLiC hinge in its RSO form (Zhao et al. 2023; Liu et al. 2024): max(0, 1 - βΔ), 1/β the margin."""
    rc, rr = _ratios(policy_chosen, policy_rejected, reference_chosen, reference_rejected, reference_free)
    return torch.relu(1 - beta * (rc - rr)), *_rewards(beta, rc, rr)


@register("apo_zero")
def apo_zero(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta: float = 0.1,
             reference_free: bool = False) -> Out:
    """APO-zero (D'Oosterlinck et al. 2024): (1 - σ(β r_w)) + σ(β r_l); raises the winner, lowers
    the loser. Use when the winners are better than the model's outputs."""
    rc, rr = _ratios(policy_chosen, policy_rejected, reference_chosen, reference_rejected, reference_free)
    losses = (1 - torch.sigmoid(beta * rc)) + torch.sigmoid(beta * rr)
    return losses, *_rewards(beta, rc, rr)


@register("apo_down")
def apo_down(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta: float = 0.1,
             reference_free: bool = False) -> Out:
    """APO-down (D'Oosterlinck et al. 2024): σ(β r_w) + (1 - σ(βΔ)); lowers both, the loser more.
    Use when the model's outputs already beat the winners."""
    rc, rr = _ratios(policy_chosen, policy_rejected, reference_chosen, reference_rejected, reference_free)
    losses = torch.sigmoid(beta * rc) + (1 - torch.sigmoid(beta * (rc - rr)))
    return losses, *_rewards(beta, rc, rr)


@register("nca_pair")
def nca_pair(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta: float = 0.1,
             reference_free: bool = False) -> Out:
    """NCA, pairwise (Chen et al. 2024, with one negative):
    -log σ(β r_w) - ½ log σ(-β r_w) - ½ log σ(-β r_l)."""
    rc, rr = _ratios(policy_chosen, policy_rejected, reference_chosen, reference_rejected, reference_free)
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
             beta: float = 0.1, reference_free: bool = False) -> Out:
    """BCO on pairs (Jung et al. 2024, eq. 8): -log σ(β r_w - δ) - log σ(-(β r_l - δ)), with δ the running
    mean of the rewards β r_w and β r_l, updated with this batch before it is used (as TRL's DPOTrainer did
    with its RunningMoments; its later refactored ``bco_pair`` drops δ, see docs/methods.md).
    ``reward_shift`` is the term's ``RunningMean``, the module's state (checkpointed). Departure from BCO's
    own trainer: no density-ratio (UDM) weights."""
    rc, rr = _ratios(policy_chosen, policy_rejected, reference_chosen, reference_rejected, reference_free)
    delta = reward_shift.update(torch.cat([beta * rc, beta * rr])).to(rc.dtype)
    losses = -F.logsigmoid(beta * rc - delta) - F.logsigmoid(-(beta * rr - delta))
    return losses, *_rewards(beta, rc, rr)


@register("sppo_hard")
def sppo_hard(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta: float = 0.1,
              reference_free: bool = False) -> Out:
    """SPPO with hard labels (Wu et al. 2024, eq. 4.7 of Algorithm 1 with P = 1 for the winner and 0 for
    the loser; TRL's form): (r_w - 1/(2β))² + (r_l + 1/(2β))²."""
    rc, rr = _ratios(policy_chosen, policy_rejected, reference_chosen, reference_rejected, reference_free)
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


@register("exo_pair")
def exo_pair(policy_chosen, policy_rejected, reference_chosen, reference_rejected,
             beta: float = 0.1, label_smoothing: float = 1e-3, reference_free: bool = False) -> Out:
    """EXO on pairs (Ji et al. 2024, eq. 16 with K = 2; TRL ``exo_pair``): KL(p_θ ‖ p_label) over the pair,
    p_θ = (σ(βΔ), σ(-βΔ)) and p_label = (1-ε, ε):
    σ(βΔ)[log σ(βΔ) - log(1-ε)] + σ(-βΔ)[log σ(-βΔ) - log ε]. ε = ``label_smoothing`` ∈ (0, 0.5),
    1e-3 by default (the paper's value, as TRL's documentation gives it); its minimum 0 is at σ(βΔ) = 1-ε."""
    rc, rr = _ratios(policy_chosen, policy_rejected, reference_chosen, reference_rejected, reference_free)
    x, eps = beta * (rc - rr), label_smoothing
    losses = (torch.sigmoid(x) * (F.logsigmoid(x) - math.log1p(-eps))
              + torch.sigmoid(-x) * (F.logsigmoid(-x) - math.log(eps)))
    return losses, *_rewards(beta, rc, rr)


def _aot_loss(delta: torch.Tensor, beta: float, eps: float) -> torch.Tensor:
    return -(1 - eps) * F.logsigmoid(beta * delta) - eps * F.logsigmoid(-beta * delta)


@register("aot")
def aot(policy_chosen, policy_rejected, reference_chosen, reference_rejected,
        beta: float = 0.1, label_smoothing: float = 0.0, reference_free: bool = False) -> Out:
    """AOT, paired (Melnyk et al. 2024, distributional alignment via optimal transport; TRL ``aot``): the
    batch's policy margins log πθ(y_w) - log πθ(y_l) and reference margins are sorted separately and matched
    by rank, δ_(k) = policy_(k) - reference_(k); per rank -(1-ε) log σ(βδ) - ε log σ(-βδ). Row k of the
    losses is the k-th rank, not pair k (only the batch mean has a meaning). The sort runs over this
    device's batch. Rewards are the pairs' own β r_w, β r_l."""
    rc, rr = _ratios(policy_chosen, policy_rejected, reference_chosen, reference_rejected, reference_free)
    policy = torch.sort(policy_chosen - policy_rejected).values
    ref = 0.0 if reference_free else torch.sort(reference_chosen - reference_rejected).values
    return _aot_loss(policy - ref, beta, label_smoothing), *_rewards(beta, rc, rr)


@register("aot_unpaired")
def aot_unpaired(policy_chosen, policy_rejected, reference_chosen, reference_rejected,
                 beta: float = 0.1, label_smoothing: float = 0.0, reference_free: bool = False) -> Out:
    """AOT, unpaired (Melnyk et al. 2024; TRL ``aot_unpaired``, formerly ``aot_pair``): the batch's chosen
    log-ratios r_w and rejected log-ratios r_l are sorted separately and matched by rank,
    δ_(k) = r_w,(k) - r_l,(k); per rank -(1-ε) log σ(βδ) - ε log σ(-βδ). Which rejected response came with
    which chosen one does not matter. Rows are ranks; the sort runs over this device's batch."""
    rc, rr = _ratios(policy_chosen, policy_rejected, reference_chosen, reference_rejected, reference_free)
    delta = torch.sort(rc).values - torch.sort(rr).values
    return _aot_loss(delta, beta, label_smoothing), *_rewards(beta, rc, rr)


@register("discopop")
def discopop(policy_chosen, policy_rejected, reference_chosen, reference_rejected,
             beta: float = 0.1, discopop_tau: float = 0.05, reference_free: bool = False) -> Out:
    """DiscoPOP, the log-ratio modulated loss (Chris Lu et al. 2024, eq. 5; TRL ``discopop``): with x = βΔ
    and m = σ(x/τ), (1 - m)·(-log σ(x)) + m·exp(-x). τ = ``discopop_tau`` ∈ (0, 1], 0.05 the paper's value.
    m·exp(-x) is computed as exp(log σ(x/τ) - x), so a large wrong-way margin (m → 0, exp(-x) → ∞) gives 0
    instead of 0·∞."""
    rc, rr = _ratios(policy_chosen, policy_rejected, reference_chosen, reference_rejected, reference_free)
    x = beta * (rc - rr)
    losses = -F.logsigmoid(x) * torch.sigmoid(-x / discopop_tau) + torch.exp(F.logsigmoid(x / discopop_tau) - x)
    return losses, *_rewards(beta, rc, rr)


@register("wpo")
def wpo(policy_chosen, policy_rejected, reference_chosen, reference_rejected, policy_chosen_avg,
        policy_rejected_avg, beta: float = 0.1, reference_free: bool = False) -> Out:
    """WPO (Zhou et al. 2024): DPO's -log σ(βΔ), each pair weighted by w = exp(avg log πθ(y_w)) ·
    exp(avg log πθ(y_l)), the responses' length-normalised probabilities under the current policy, detached
    (w ≤ 1). Departure from TRL's ``use_weighting``: TRL divides each token's probability by Σ_v p(v)², the
    paper's weight aligned to the policy's own sampling, which needs the full next-token distribution; only
    per-sequence sums reach a loss here. Rewards are β r, unweighted."""
    rc, rr = _ratios(policy_chosen, policy_rejected, reference_chosen, reference_rejected, reference_free)
    weight = torch.exp((policy_chosen_avg + policy_rejected_avg).detach())
    return -weight * F.logsigmoid(beta * (rc - rr)), *_rewards(beta, rc, rr)


@register("ld_dpo")
def ld_dpo(policy_chosen, policy_rejected, reference_chosen, reference_rejected, policy_chosen_tokens,
           policy_rejected_tokens, beta: float = 0.1, ld_alpha: float = 0.5, reference_free: bool = False) -> Out:
    """LD-DPO, length-desensitised DPO (Liu et al. 2024; TRL ``ld_alpha``): the longer response's log-prob is
    split at the shared length l_p = min(|y_w|, |y_l|) into the first l_p tokens and the excess, the excess
    weighted by α = ``ld_alpha`` ∈ [0, 1]; DPO on those log-probs, for the policy and the reference alike (as
    TRL 1.x). APPROXIMATION: only sums reach a loss, so the split assumes every token of a response carries
    its average log-prob: log p̂(y) = log p(y)·(l_p + α(|y| - l_p))/|y|. Exact when the lengths are equal (then
    it is DPO) or the token log-probs are uniform; the exact split needs per-token log-probs (see
    docs/methods.md). Rewards are β times the desensitised log-ratios."""
    n_w, n_l = policy_chosen_tokens.detach().clamp(min=1), policy_rejected_tokens.detach().clamp(min=1)  # counts
    shared = torch.minimum(n_w, n_l)
    s_w, s_l = (shared + ld_alpha * (n_w - shared)) / n_w, (shared + ld_alpha * (n_l - shared)) / n_l
    rc, rr = _ratios(policy_chosen * s_w, policy_rejected * s_l,
                     None if reference_free else reference_chosen * s_w,
                     None if reference_free else reference_rejected * s_l, reference_free)
    return -F.logsigmoid(beta * (rc - rr)), *_rewards(beta, rc, rr)


# ---- K responses per prompt (listwise): in ``anyalign/losses_listwise.py``, registered here in this order ----
from . import losses_listwise  # noqa: E402,F401


# ---- mDPO's media-conditioned terms: in ``anyalign/losses_conditional.py``, registered here in this order ----
from . import losses_conditional  # noqa: E402,F401


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
    """Negative log-likelihood of the chosen response, per token: -log πθ(y_w)/|y_w| per pair, each pair's
    mean counting once (RPO's auxiliary term, normalised by the response's length as in its paper; HA-DPO's
    runs on separate SFT data instead, see docs/methods.md). ``nll`` has the other reductions."""
    return -policy_chosen_avg, None, None


NLL_REDUCTIONS = ("batch_tokens", "sequence")


@register("nll")
def nll(policy_chosen, policy_chosen_tokens, reduction: str = "batch_tokens") -> Out:
    """Negative log-likelihood of the chosen responses, reduced otherwise than ``sft`` (a per-pair token
    mean). ``batch_tokens``: one token mean over the whole batch, -Σ_i log πθ(y_w,i) / Σ_i |y_w,i| (TRL's
    ``sft`` loss type and its former ``rpo_alpha``: cross-entropy over all chosen tokens of the batch, so a
    long response weighs more); row i is -log πθ(y_w,i)·B / Σ_i |y_w,i|, whose batch mean is that ratio
    (this device's batch). ``sequence``: -log πθ(y_w) summed over the response's tokens, per pair."""
    if reduction == "sequence":
        return -policy_chosen, None, None
    if reduction != "batch_tokens":
        raise ValueError(f"reduction={reduction!r} is not one of {NLL_REDUCTIONS}")
    return -policy_chosen * (len(policy_chosen) / policy_chosen_tokens.detach().sum().clamp(min=1)), None, None


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
    """Check a config's ``losses`` list at start-up; returns normalised ``{name, weight, params, spec}`` dicts,
    ``spec`` the term's ``LossSpec`` bound to its parameters (what it needs and how it is called)."""
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
        if not isinstance(params.get("reference_free", False), bool):  # "false" would be truthy
            raise ValueError(f"model.losses[{i}] ({name}): reference_free must be true or false, "
                             f"got {params['reference_free']!r}")
        for check in CHECKS.get(name, ()):
            check(i, name, params)
        out.append({"name": name, "weight": weight, "params": params, "spec": LOSSES[name].bind(params)})
    return out


def _in_range(key: str, low: float, high: float, closed: str = "[)", why: str = "") -> Callable:
    """A start-up check that hyper-parameter ``key`` lies in the interval (``closed``: which ends belong)."""
    def check(i: int, name: str, p: dict) -> None:
        v = p[key]
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and \
            (low <= v if closed[0] == "[" else low < v) and (v <= high if closed[1] == "]" else v < high)
        if not ok:
            raise ValueError(f"model.losses[{i}] ({name}): {key} must be in {closed[0]}{low}, {high}{closed[1]}"
                             f"{why}, got {v!r}")
    return check


def _one_of(key: str, allowed: tuple[str, ...]) -> Callable:
    def check(i: int, name: str, p: dict) -> None:
        if p[key] not in allowed:
            raise ValueError(f"model.losses[{i}] ({name}): {key} must be one of {list(allowed)}, got {p[key]!r}")
    return check


_LABEL_SMOOTHING = _in_range("label_smoothing", 0.0, 0.5)  # robust: ε = 0.5 divides by 0; above it, inverted
CHECKS: dict[str, tuple[Callable[[int, str, dict], None], ...]] = {
    "sigmoid": (_LABEL_SMOOTHING, _one_of("f_divergence", F_DIVERGENCES),
                _in_range("f_alpha", 0.0, 1.0, "(]", " (α → 0 is reverse_kl, 1 is forward_kl)")),
    "robust": (_LABEL_SMOOTHING,),
    "exo_pair": (_in_range("label_smoothing", 0.0, 0.5, "()", " (EXO takes log ε and log(1 - ε))"),),
    "pairwise_expansion": (_LABEL_SMOOTHING,),
    "aot": (_LABEL_SMOOTHING,),
    "aot_unpaired": (_LABEL_SMOOTHING,),
    "discopop": (_in_range("discopop_tau", 0.0, 1.0, "(]", " (above 1 the exponential term is unbounded)"),),
    "ld_dpo": (_in_range("ld_alpha", 0.0, 1.0, "[]"),),
    "nll": (_one_of("reduction", NLL_REDUCTIONS),),
}
