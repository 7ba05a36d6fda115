"""Losses against values computed by hand, and the registry's start-up checks."""
import math

import pytest
import torch

from anyalign.losses import LOSSES, validate_terms


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def test_sigmoid_matches_hand_computed():
    # policy chosen -10, rejected -12; reference chosen -11, rejected -11
    # chosen log-ratio = +1, rejected log-ratio = -1, beta 0.1 -> logit 0.2
    losses, rc, rr = LOSSES["sigmoid"].fn(t(-10.0), t(-12.0), t(-11.0), t(-11.0), beta=0.1)
    expected = -math.log(1 / (1 + math.exp(-0.2)))  # 0.598138...
    assert losses.item() == pytest.approx(expected, abs=1e-12)
    assert rc.item() == pytest.approx(0.1) and rr.item() == pytest.approx(-0.1)


def test_cdpo_label_smoothing_hand_computed():
    losses, _, _ = LOSSES["sigmoid"].fn(t(-10.0), t(-12.0), t(-11.0), t(-11.0), beta=0.1, label_smoothing=0.2)
    ls = lambda x: math.log(1 / (1 + math.exp(-x)))
    assert losses.item() == pytest.approx(-0.8 * ls(0.2) - 0.2 * ls(-0.2), abs=1e-12)


def test_sigmoid_equal_logps_is_log2_and_large_margin_is_finite():
    losses, _, _ = LOSSES["sigmoid"].fn(t(-5.0), t(-5.0), t(-5.0), t(-5.0))
    assert losses.item() == pytest.approx(math.log(2))
    big, _, _ = LOSSES["sigmoid"].fn(t(0.0), t(-1e6), t(0.0), t(0.0), beta=1.0)
    wrong, _, _ = LOSSES["sigmoid"].fn(t(-1e6), t(0.0), t(0.0), t(0.0), beta=1.0)
    assert big.item() == pytest.approx(0.0, abs=1e-12)
    assert wrong.item() == pytest.approx(1e6)  # -log σ(-1e6) = 1e6, no overflow to inf


def test_sigmoid_gradient_pushes_chosen_up_rejected_down():
    pc, pr = t(-10.0).requires_grad_(), t(-12.0).requires_grad_()
    LOSSES["sigmoid"].fn(pc, pr, t(-11.0), t(-11.0))[0].sum().backward()
    assert pc.grad.item() < 0 < pr.grad.item()  # descent raises log p(chosen), lowers log p(rejected)


def test_sft_is_per_token_nll():
    # chosen avg log-prob -0.75 (e.g. -3 over 4 tokens) -> loss 0.75
    losses, rc, rr = LOSSES["sft"].fn(t(-0.75))
    assert losses.item() == pytest.approx(0.75) and rc is None and rr is None


def test_registry_derives_needs_from_signatures():
    assert LOSSES["sigmoid"].needs_reference and LOSSES["sigmoid"].sequences == {"chosen", "rejected"}
    assert not LOSSES["sft"].needs_reference and LOSSES["sft"].sequences == {"chosen"}


@pytest.mark.parametrize("terms, message", [
    ([{"name": "sigmoidd"}], "not a known loss"),
    ([{"name": "sigmoid", "betta": 0.1}], "unknown parameter"),
    ([{"name": "sigmoid", "label_smoothing": 0.5}], "label_smoothing"),
    ([], "empty"),
])
def test_bad_terms_fail_with_the_key(terms, message):
    with pytest.raises(ValueError, match=message):
        validate_terms(terms)


def test_reward_term_is_named_not_taken_from_the_order():
    from anyalign.metrics import default_reward_term
    mdpo = validate_terms([{"name": "conditional"}, {"name": "anchor"}, {"name": "sigmoid"}])
    assert default_reward_term(mdpo, None) == "sigmoid"  # listed last, still the headline
    assert default_reward_term(validate_terms([{"name": "sft"}]), None) is None
    two = validate_terms([{"name": "sigmoid"}, {"name": "ipo"}])
    with pytest.raises(ValueError, match=r"several preference terms \['sigmoid', 'ipo'\].*model.reward_term"):
        default_reward_term(two, None)
    assert default_reward_term(two, "ipo") == "ipo"
    with pytest.raises(ValueError, match=r"model.reward_term='conditional' is not a preference term"):
        default_reward_term(mdpo, "conditional")


def test_headline_rewards_come_from_the_reward_term():
    from anyalign.logprobs import SeqLogps
    from anyalign.metrics import TermOutput, step_metrics
    batch = {"index": {"chosen": torch.tensor([0]), "rejected": torch.tensor([1])}}
    policy = SeqLogps(torch.tensor([-1.0, -2.0]), torch.tensor([1.0, 1.0]))
    outputs = [TermOutput("conditional", torch.zeros(1), torch.tensor([5.0]), torch.tensor([-5.0])),
               TermOutput("sigmoid", torch.zeros(1), torch.tensor([0.1]), torch.tensor([0.3]))]
    metrics, verdicts = step_metrics(torch.tensor(0.0), outputs, "sigmoid", policy, None, batch)
    assert float(metrics["rewards/margins"]) == pytest.approx(-0.2) and float(metrics["rewards/accuracies"]) == 0.0
    assert float(metrics["rewards/conditional_margin"]) == 10.0 and verdicts.correct.tolist() == [0.0]
