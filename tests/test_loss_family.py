"""Every registered loss against values computed by hand with ``math``, and generic checks over ``LOSSES``:
large margins stay finite, gradients point the right way, and ``validate_terms`` names the bad key."""
import math

import pytest
import torch

from anyalign.losses import LOSSES, RunningMean, parse_input, register, validate_terms


def logsig(x):  # log σ(x), written out so the expected values do not reuse torch's formula
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def sig(x):
    return 1 / (1 + math.exp(-x))


def log_odds(avg):  # log(p / (1 - p)), p = exp(avg), the direct way
    p = math.exp(avg)
    return math.log(p / (1 - p))


LN2 = math.log(2)
# The standard pair: policy chosen -10, rejected -12; reference -11 / -11 -> r_w = +1, r_l = -1, Δ = 2.
PAIR = {"policy_chosen": [-10.0], "policy_rejected": [-12.0], "reference_chosen": [-11.0], "reference_rejected": [-11.0]}
EQUAL = {k: [-5.0] for k in PAIR}
# Per-token averages: r_w = -0.5 - (-0.6) = 0.1, r_l = -0.8 - (-0.6) = -0.2, Δ̄ = 0.3.
AVG = {"policy_chosen_avg": [-0.5], "policy_rejected_avg": [-0.8],
       "reference_chosen_avg": [-0.6], "reference_rejected_avg": [-0.6]}
EQUAL_AVG = {k: [-0.7] for k in AVG}
# mDPO: same chosen response, clean image r = -10 - (-11) = +1, corrupted image r = -13 - (-12) = -1.
COND = {"policy_chosen": [-10.0], "reference_chosen": [-11.0],
        "policy_chosen_corrupt": [-13.0], "reference_chosen_corrupt": [-12.0]}
# KTO, two rows (desirable, undesirable): r = [+1, -1]; KL diffs [1, -2] -> mean -0.5 -> z0 = 0.
KTO = {"policy_completion": [-10.0, -12.0], "reference_completion": [-11.0, -11.0],
       "policy_kl": [-20.0, -22.0], "reference_kl": [-21.0, -20.0], "desirable": [True, False]}
# Same rows, KL diffs [1, 2] -> z0 = 1.5.
KTO_Z = {**KTO, "policy_kl": [-20.0, -20.0], "reference_kl": [-21.0, -22.0]}

# name -> [(inputs, params, expected losses, expected (chosen, rejected) rewards or None)]
CASES = {
    "sigmoid": [
        (PAIR, {"beta": 0.1}, [-logsig(0.2)], ([0.1], [-0.1])),
        (PAIR, {"beta": 0.1, "label_smoothing": 0.2}, [-0.8 * logsig(0.2) - 0.2 * logsig(-0.2)], ([0.1], [-0.1])),
        (EQUAL, {}, [LN2], ([0.0], [0.0])),
    ],
    "robust": [
        (PAIR, {"label_smoothing": 0.1}, [(-0.9 * logsig(0.2) + 0.1 * logsig(-0.2)) / 0.8], ([0.1], [-0.1])),
        (PAIR, {"label_smoothing": 0.0}, [-logsig(0.2)], ([0.1], [-0.1])),  # ε = 0 is DPO
        (EQUAL, {"label_smoothing": 0.1}, [(0.9 * LN2 - 0.1 * LN2) / 0.8], ([0.0], [0.0])),  # = ln 2
    ],
    "ipo": [
        (AVG, {}, [(0.3 - 5.0) ** 2], ([0.01], [-0.02])),  # 1/(2β) = 5
        (AVG, {"beta": 0.5}, [(0.3 - 1.0) ** 2], ([0.05], [-0.1])),
        (EQUAL_AVG, {}, [25.0], ([0.0], [0.0])),
    ],
    "hinge": [
        (PAIR, {}, [1 - 0.2], ([0.1], [-0.1])),
        (PAIR, {"beta": 1.0}, [0.0], ([1.0], [-1.0])),  # βΔ = 2 is past the margin
        (EQUAL, {}, [1.0], ([0.0], [0.0])),
    ],
    "apo_zero": [
        (PAIR, {}, [(1 - sig(0.1)) + sig(-0.1)], ([0.1], [-0.1])),
        (EQUAL, {}, [1.0], ([0.0], [0.0])),
    ],
    "apo_down": [
        (PAIR, {}, [sig(0.1) + (1 - sig(0.2))], ([0.1], [-0.1])),
        (EQUAL, {}, [1.0], ([0.0], [0.0])),
    ],
    "nca_pair": [
        (PAIR, {}, [-logsig(0.1) - 0.5 * logsig(-0.1) - 0.5 * logsig(0.1)], ([0.1], [-0.1])),
        (EQUAL, {}, [2 * LN2], ([0.0], [0.0])),
    ],
    "bco_pair": [  # δ: the running mean after this batch's update (the first), = mean(β r_w, β r_l)
        (PAIR, {}, [-logsig(0.1) - logsig(0.1)], ([0.1], [-0.1])),  # δ = 0
        (EQUAL, {}, [2 * LN2], ([0.0], [0.0])),
        # r_w = +3, r_l = +1: δ = 0.2, so -log σ(0.3 - 0.2) - log σ(-(0.1 - 0.2))
        ({**PAIR, "policy_chosen": [-8.0], "policy_rejected": [-10.0]}, {}, [-logsig(0.1) - logsig(0.1)],
         ([0.3], [0.1])),
    ],
    "sppo_hard": [
        (PAIR, {}, [(1 - 5.0) ** 2 + (-1 + 5.0) ** 2], ([0.1], [-0.1])),  # 32
        (EQUAL, {}, [2 * 25.0], ([0.0], [0.0])),
    ],
    "dpop": [
        (PAIR, {}, [-logsig(0.2)], ([0.1], [-0.1])),  # policy_w above reference_w: no penalty, DPO
        # policy chosen -12 < reference -11: penalty 1; r_w = -1, r_l = -4, Δ = 3
        ({**PAIR, "policy_chosen": [-12.0], "policy_rejected": [-15.0]}, {},
         [-logsig(0.1 * (3 - 50 * 1))], ([-0.1], [-0.4])),
        ({**PAIR, "policy_chosen": [-12.0], "policy_rejected": [-15.0]}, {"dpop_lambda": 0.5},
         [-logsig(0.1 * (3 - 0.5))], ([-0.1], [-0.4])),
        (EQUAL, {}, [LN2], ([0.0], [0.0])),
    ],
    "conditional": [
        (COND, {}, [-logsig(0.1 * (1 - (-1)))], ([0.1], [-0.1])),
        ({k: [-4.0] for k in COND}, {}, [LN2], ([0.0], [0.0])),
    ],
    "anchor": [
        (PAIR, {}, [-logsig(0.1)], None),
        (PAIR, {"delta": 0.5}, [-logsig(0.1 - 0.5)], None),
        (EQUAL, {}, [LN2], None),
    ],
    "simpo": [
        (AVG, {}, [-logsig(2.0 * (-0.5) - 2.0 * (-0.8) - 0.5)], ([-1.0], [-1.6])),  # -log σ(0.1)
        (EQUAL_AVG, {"gamma": 0.0}, [LN2], ([-1.4], [-1.4])),
    ],
    "orpo": [
        (AVG, {}, [0.5 - 0.1 * logsig(log_odds(-0.5) - log_odds(-0.8))], ([-0.05], [-0.08])),
        (AVG, {"beta": 1.0}, [0.5 - logsig(log_odds(-0.5) - log_odds(-0.8))], ([-0.5], [-0.8])),
        (EQUAL_AVG, {}, [0.7 + 0.1 * LN2], ([-0.07], [-0.07])),
    ],
    "sft": [
        ({"policy_chosen_avg": [-0.75]}, {}, [0.75], None),  # e.g. -3 over 4 tokens
    ],
    "kto": [
        (KTO, {}, [1 - sig(0.1 * (1 - 0)), 1 - sig(0.1 * (0 - (-1)))], None),
        (KTO_Z, {"undesirable_weight": 2.0},
         [1 - sig(0.1 * (1 - 1.5)), 2.0 * (1 - sig(0.1 * (1.5 - (-1))))], None),
    ],
}


def tensors(inputs: dict, dtype=torch.float64) -> dict:
    out = {k: torch.tensor(v, dtype=torch.bool if isinstance(v[0], bool) else dtype) for k, v in inputs.items()}
    return out | {"reward_shift": RunningMean()}  # a fresh state for the terms that keep one (BCO)


def test_every_registered_loss_has_hand_computed_cases():
    # the rest of the DPO family's cases live in test_loss_family_more.py
    from test_k_responses import K_CASES  # the listwise terms (K responses per prompt)
    from test_loss_family_more import MORE_CASES

    assert set(CASES) | set(MORE_CASES) | set(K_CASES) == set(LOSSES)
    assert not set(CASES) & set(MORE_CASES) and not (set(CASES) | set(MORE_CASES)) & set(K_CASES)


@pytest.mark.parametrize("name, i", [(n, i) for n, cases in CASES.items() for i in range(len(cases))])
def test_loss_matches_hand_computed(name, i):
    inputs, params, expected, rewards = CASES[name][i]
    x = tensors(inputs)  # a shared dict may hold more than the loss reads; each input it names must be there
    losses, chosen_r, rejected_r = LOSSES[name].fn(**{n: x[n] for n in LOSSES[name].inputs}, **params)
    assert losses.tolist() == pytest.approx(expected, abs=1e-12)
    if rewards is None:
        assert chosen_r is None and rejected_r is None
    else:
        assert chosen_r.tolist() == pytest.approx(rewards[0], abs=1e-12)
        assert rejected_r.tolist() == pytest.approx(rewards[1], abs=1e-12)


def test_robust_with_zero_epsilon_is_dpo():
    g = torch.Generator().manual_seed(0)
    x = {k: -20 * torch.rand(8, generator=g, dtype=torch.float64) for k in PAIR}
    assert torch.allclose(LOSSES["robust"].fn(**x, label_smoothing=0.0)[0], LOSSES["sigmoid"].fn(**x)[0])


# ---- generic checks, parametrised over the registry ----
def margin_inputs(name: str, m: float, dtype=torch.float32) -> dict:
    """Two rows at log-ratio margin m: the 'good' side (chosen, desirable completion) has r = +m/2, the
    'bad' side (rejected, corrupted, undesirable completion) r = -m/2; policy log-probs stay ≤ -1."""
    good, bad, ref = -1 - max(0.0, -m), -1 - max(0.0, m), -1 - abs(m) / 2
    values = {"chosen": [good, good], "rejected": [bad, bad], "chosen_corrupt": [bad, bad],
              "rejected_corrupt": [good, good],  # the rejected answer belongs with the corrupted media
              "completion": [good, bad], "kl": [good, good]}
    out = {}
    for n in LOSSES[name].inputs:
        if n == "desirable":
            out[n] = torch.tensor([True, False])
            continue
        if n == "ranks":  # listwise terms: [B, K], the 'good' response ranked first
            out[n] = torch.tensor([[0.0, 1.0], [0.0, 1.0]], dtype=dtype)
            continue
        if n == "reward_shift":
            out[n] = RunningMean()
            continue
        source, seq, kind = parse_input(n)
        if kind == "tokens":  # token counts: the rejected response the longer one
            out[n] = torch.tensor([3.0, 3.0] if seq == "rejected" else [2.0, 2.0], dtype=dtype)
            continue
        if seq == "responses":  # [B, K] = [good, bad] per row
            out[n] = torch.tensor([[good, bad]] * 2 if source == "policy" else [[ref, ref]] * 2, dtype=dtype)
            continue
        out[n] = torch.tensor(values[seq] if source == "policy" else [ref, ref], dtype=dtype)
    return out


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("m", [1e6, -1e6, 0.0])
def test_large_margins_stay_finite(name, m):
    x = margin_inputs(name, m)
    for k, v in x.items():
        if k.startswith("policy_"):
            v.requires_grad_()
    losses, chosen_r, rejected_r = LOSSES[name].fn(**x)
    assert torch.isfinite(losses).all(), losses
    assert (chosen_r is None) == (rejected_r is None)  # the module logs both or neither
    losses.sum().backward()
    for k, v in x.items():
        if isinstance(v, torch.Tensor) and v.grad is not None:
            assert torch.isfinite(v.grad).all(), (k, v.grad)


def test_orpo_average_log_prob_at_zero_is_finite():
    x = {"policy_chosen_avg": torch.tensor([0.0, -1e-9], requires_grad=True),
         "policy_rejected_avg": torch.tensor([-0.5, 0.0])}
    losses = LOSSES["orpo"].fn(**x)[0]
    losses.sum().backward()
    assert torch.isfinite(losses).all() and torch.isfinite(x["policy_chosen_avg"].grad).all()


# Which way descent should move each policy input: -1 = the loss falls as it rises (pushed up), +1 = pushed
# down, 0 = no gradient. Per row, since KTO's rows differ. A new input name fails until it is listed here.
SIGN = {"chosen": [-1, -1], "rejected": [1, 1], "chosen_corrupt": [1, 1], "rejected_corrupt": [-1, -1],
        "completion": [-1, 1], "kl": [0, 0], "responses": [[-1, 1], [-1, 1]]}
SIGN_OVERRIDES = {("apo_down", "policy_chosen"): [1, 1],  # APO-down lowers the winner too, by design
                  ("wpo", "policy_chosen_avg"): [0, 0], ("wpo", "policy_rejected_avg"): [0, 0]}  # detached weights


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradient_pushes_chosen_up_and_rejected_down(name):
    x = margin_inputs(name, 2.0, torch.float64)  # r_w = +1, r_l = -1: no term is saturated
    policy = [k for k in x if k.startswith("policy_")]
    for k in policy:
        x[k].requires_grad_()
    LOSSES[name].fn(**x)[0].sum().backward()
    for k in policy:
        grad = x[k].grad if x[k].grad is not None else torch.zeros(2, dtype=torch.float64)
        _, seq, kind = parse_input(k)
        expected = SIGN_OVERRIDES.get((name, k), [0, 0] if kind == "tokens" else SIGN[seq])  # counts: no gradient
        assert torch.sign(grad).tolist() == expected, (k, grad)


def test_apo_down_still_widens_the_margin():
    x = margin_inputs("apo_down", 2.0, torch.float64)
    x["policy_chosen"].requires_grad_(), x["policy_rejected"].requires_grad_()
    LOSSES["apo_down"].fn(**x)[0].sum().backward()
    assert (x["policy_rejected"].grad > x["policy_chosen"].grad).all()  # the loser falls faster


def test_kto_registry_entry_separates_labels_from_log_probs():
    spec = LOSSES["kto"]
    assert spec.data_inputs == ("desirable",)
    assert spec.sequences == {"completion", "kl"} and spec.needs_reference
    listwise = [n for n, s in LOSSES.items() if "responses" in s.sequences]  # K responses: ranks [B, K]
    assert all(LOSSES[n].data_inputs == ("ranks",) for n in listwise)
    assert all(s.data_inputs == () for n, s in LOSSES.items() if n != "kto" and n not in listwise)
    assert LOSSES["conditional"].sequences == {"chosen", "chosen_corrupt"}
    assert not LOSSES["simpo"].needs_reference and not LOSSES["orpo"].needs_reference


def test_register_rejects_an_input_that_is_neither_log_prob_nor_label():
    def bad(policy_chosen, labels, beta: float = 0.1):
        raise AssertionError

    with pytest.raises(TypeError, match="labels"):
        register("bad_loss_for_test")(bad)
    assert "bad_loss_for_test" not in LOSSES


# ---- start-up checks name the term ----
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_defaults_validate(name):
    assert validate_terms([{"name": name}])[0]["params"] == LOSSES[name].hyper


@pytest.mark.parametrize("name", sorted(n for n, s in LOSSES.items() if "beta" in s.hyper))
@pytest.mark.parametrize("beta", [-0.1, 0.0])
def test_non_positive_beta_fails_naming_the_term(name, beta):
    with pytest.raises(ValueError, match=r"model\.losses\[1\].*beta must be > 0"):
        validate_terms([{"name": "sft"}, {"name": name, "beta": beta}])


@pytest.mark.parametrize("eps", [0.5, 0.7, -0.1])
def test_robust_epsilon_out_of_range_fails_naming_the_term(eps):
    with pytest.raises(ValueError, match=r"model\.losses\[1\] \(robust\): label_smoothing"):
        validate_terms([{"name": "sigmoid"}, {"name": "robust", "label_smoothing": eps}])
    assert validate_terms([{"name": "robust", "label_smoothing": 0.49}])[0]["params"]["label_smoothing"] == 0.49


@pytest.mark.parametrize("term", [{"name": "robust", "epsilon": 0.1}, {"name": "dpop", "lambda_": 50.0},
                                  {"name": "kto", "beta": 0.1, "desirable": True}])
def test_unknown_parameter_fails_naming_the_term(term):
    with pytest.raises(ValueError, match=r"model\.losses\[1\].*unknown parameter"):
        validate_terms([{"name": "sigmoid"}, term])


def test_bco_shift_is_a_running_mean_kept_in_training_and_checkpointed():
    state = RunningMean()
    x = tensors(PAIR) | {"reward_shift": state}
    pair = {k: x[k] for k in LOSSES["bco_pair"].inputs}
    LOSSES["bco_pair"].fn(**{**pair, "policy_chosen": torch.tensor([-8.0], dtype=torch.float64),
                             "policy_rejected": torch.tensor([-10.0], dtype=torch.float64)})  # batch mean 0.2
    LOSSES["bco_pair"].fn(**pair)  # batch mean 0.0
    assert int(state.count) == 2 and float(state.mean) == pytest.approx(0.1, abs=1e-12)
    state.eval()
    LOSSES["bco_pair"].fn(**pair)  # evaluation reads δ but never moves it
    assert int(state.count) == 2 and float(state.mean) == pytest.approx(0.1, abs=1e-12)
    restored = RunningMean()
    restored.load_state_dict(state.state_dict())
    assert float(restored.mean) == float(state.mean) and int(restored.count) == 2
