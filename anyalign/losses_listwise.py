"""Listwise preference terms (K responses per prompt), registered in ``anyalign.losses.LOSSES``.

Inputs are ``[B, K]``: ``policy_responses``/``reference_responses`` (log-prob sums, absent entries 0) and
``ranks`` (0 the best, +inf absent). Split out of ``anyalign/losses.py`` (imported there, so registering
them needs nothing else); formulas and sources in ``docs/methods.md``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .loss_registry import Out, register


# ---- K responses per prompt (listwise): inputs [B, K], ``ranks`` [B, K] (0 best, +inf absent) ----
def _listwise(policy_responses, reference_responses, ranks, beta, reference_free):
    """(s = β r with absent entries 0, the valid mask, rewards (β r_best, β r_worst) detached)."""
    valid = torch.isfinite(ranks)
    r = policy_responses if reference_free else policy_responses - reference_responses
    s = beta * r.masked_fill(~valid, 0.0)
    best = ranks.argmin(-1, keepdim=True)  # the first of the best rank
    k = ranks.shape[-1]
    worst = k - 1 - ranks.masked_fill(~valid, -math.inf).flip(-1).argmax(-1, keepdim=True)  # the last of the worst
    return s, valid, (s.gather(-1, best).squeeze(-1).detach(), s.gather(-1, worst).squeeze(-1).detach())


@register("plackett_luce")
def plackett_luce(policy_responses, reference_responses, ranks, beta: float = 0.1,
                  reference_free: bool = False) -> Out:
    """Plackett-Luce DPO (Rafailov et al. 2023, Appendix A.3, the DPO objective under the Plackett-Luce model;
    listwise, LiPO's ``list_mle``, Liu et al. 2024): the negative log-likelihood of the ranking under a Plackett-Luce model of the implicit rewards
    s = β r, -Σ_k [s_(k) - log Σ_{j ≥ k} exp s_(j)] over the responses in rank order, the last one left out
    (its term is 0). Ties (equal ranks, from equal scores) use Breslow's approximation: each tied response's
    denominator runs over every response of the same or a worse rank, and the worst rank's responses have
    no term; for a strict order it is the Plackett-Luce likelihood exactly, and for K = 2 it is DPO. Rewards:
    β r of the best and of the worst response."""
    s, valid, rewards = _listwise(policy_responses, reference_responses, ranks, beta, reference_free)
    eye = torch.eye(ranks.shape[-1], dtype=torch.bool, device=ranks.device)
    same_or_worse = (ranks.unsqueeze(-2) >= ranks.unsqueeze(-1)) & valid.unsqueeze(-2) | eye  # [B, i, j]
    lse = torch.logsumexp(s.unsqueeze(-2).masked_fill(~same_or_worse, -math.inf), dim=-1)
    worst = ranks.masked_fill(~valid, -math.inf).amax(-1, keepdim=True)
    term = valid & (ranks < worst)
    return -torch.where(term, s - lse, torch.zeros_like(s)).sum(-1), *rewards


@register("multi_negative")
def multi_negative(policy_responses, reference_responses, ranks, beta: float = 0.1,
                   reference_free: bool = False) -> Out:
    """Multi-negative DPO, a softmax over one chosen and several rejected responses (S-DPO, Chen et al. 2024,
    arXiv 2406.09215, "DPO extended from the Plackett-Luce model to partial rankings"; InfoNCA with a one-hot
    target, Chen et al. 2024, arXiv 2402.05369):
    -log [exp s_w / (exp s_w + Σ_{l worse} exp s_l)], s = β r, the chosen y_w the best-ranked response and
    the rejected all strictly worse ones. Several tied best responses each take the softmax over themselves
    and the worse ones, averaged. The first term of Plackett-Luce; for K = 2 it is DPO. Rewards: β r of the
    best and of the worst response."""
    s, valid, rewards = _listwise(policy_responses, reference_responses, ranks, beta, reference_free)
    best = ranks.amin(-1, keepdim=True)
    chosen, worse = valid & (ranks == best), valid & (ranks > best)
    lse_worse = torch.logsumexp(s.masked_fill(~worse, -math.inf), dim=-1, keepdim=True)
    per = torch.where(chosen, torch.logaddexp(s, lse_worse) - s, torch.zeros_like(s))
    return per.sum(-1) / chosen.sum(-1).clamp(min=1), *rewards


@register("pairwise_expansion")
def pairwise_expansion(policy_responses, reference_responses, ranks, beta: float = 0.1,
                       label_smoothing: float = 0.0, reference_free: bool = False) -> Out:
    """The pairwise expansion of a ranking: DPO (with cDPO's ε, as ``sigmoid``) on every ordered pair (i, j)
    with i ranked strictly above j (tied pairs left out), averaged over the sample's pairs, so each prompt
    counts once whatever its K (InstructGPT's reward model takes all K-choose-2 comparisons of a prompt as
    one batch element, Ouyang et al. 2022, Sec. 3.5). Computed from the K log-probs of one row: the same
    value as DPO over the expanded pairs as separate samples, averaged per prompt. Rewards: β r of the
    best and of the worst response."""
    s, valid, rewards = _listwise(policy_responses, reference_responses, ranks, beta, reference_free)
    above = (ranks.unsqueeze(-1) < ranks.unsqueeze(-2)) & valid.unsqueeze(-1) & valid.unsqueeze(-2)  # [B, i, j]
    x = s.unsqueeze(-1) - s.unsqueeze(-2)
    per = -(1 - label_smoothing) * F.logsigmoid(x) - label_smoothing * F.logsigmoid(-x)
    per = torch.where(above, per, torch.zeros_like(per))
    return per.sum((-1, -2)) / above.sum((-1, -2)).clamp(min=1), *rewards
