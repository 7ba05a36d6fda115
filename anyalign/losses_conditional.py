"""mDPO's media-conditioned terms (Wang et al. 2024) and this project's extension to the rejected response,
registered in ``anyalign.losses.LOSSES`` (imported there, in this order). Inputs and conventions as in
``anyalign/losses.py``; m̃ is the sample's corrupted media (``model.negatives``, ``anyalign/data/negatives.py``);
formulas and sources in ``docs/methods.md``.
"""
from __future__ import annotations

import torch.nn.functional as F

from .loss_registry import Out, _ratios, _rewards, register


# ---- mDPO's image-conditioned terms (Wang et al. 2024) ----
@register("conditional")
def conditional(policy_chosen, reference_chosen, policy_chosen_corrupt, reference_chosen_corrupt,
                beta: float = 0.1) -> Out:
    """mDPO CoPO (Wang et al. 2024): -log σ(β[r(y_w | m) - r(y_w | m̃)]); same response, clean
    vs corrupted modality input. Rewards: (β r(y_w | m), β r(y_w | m̃))."""
    rc, rcc = _ratios(policy_chosen, policy_chosen_corrupt, reference_chosen, reference_chosen_corrupt)
    return -F.logsigmoid(beta * (rc - rcc)), *_rewards(beta, rc, rcc)


@register("conditional_rejected")
def conditional_rejected(policy_rejected_corrupt, reference_rejected_corrupt, policy_rejected, reference_rejected,
                         beta: float = 0.1) -> Out:
    """This project's extension of mDPO's conditional term to the rejected response (not in Wang et al. 2024):
    -log σ(β[r(y_l | m̃) - r(y_l | m)]). The rejected answer is one the media do not support, so it should not
    become likelier under the real media than under corrupted ones; where the training pairs reward a language
    prior, this penalises raising the prior's answer whatever the media show. Rewards:
    (β r(y_l | m̃), β r(y_l | m)), in the order of its inputs (``compares``: rejected_corrupt, rejected), so its
    logged margin ``rewards/conditional_rejected_margin`` is positive when the term is met."""
    rl, rlc = _ratios(policy_rejected, policy_rejected_corrupt, reference_rejected, reference_rejected_corrupt)
    return -F.logsigmoid(beta * (rlc - rl)), *_rewards(beta, rlc, rl)


@register("anchor")
def anchor(policy_chosen, reference_chosen, beta: float = 0.1, delta: float = 0.0) -> Out:
    """mDPO AncPO (Wang et al. 2024): -log σ(β r_w - δ), keeping the chosen reward above δ.
    Returns no rewards (there is no rejected side to compare with)."""
    return -F.logsigmoid(beta * (policy_chosen - reference_chosen) - delta), None, None
