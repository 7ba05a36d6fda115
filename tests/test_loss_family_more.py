"""The rest of the DPO family (EXO, AOT, DiscoPOP, WPO, LD-DPO, the NLL reductions, f-divergence DPO and the
``reference_free`` switch) against values computed by hand with ``math``; each trains a tiny synthetic
policy; a reference-free term builds no reference model. The generic checks over ``LOSSES`` (finite at large
margins, gradient directions, defaults validate) live in test_loss_family.py and cover these terms too."""
import json
import math

import pytest
import torch

from anyalign.losses import LOSSES, RunningMean, validate_terms


def logsig(x):  # log σ(x), written out so the expected values do not reuse torch's formula
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def sig(x):
    return 1 / (1 + math.exp(-x))


LN2 = math.log(2)
# policy chosen -10, rejected -12; reference -11 / -11 -> r_w = +1, r_l = -1, Δ = 2 (as in test_loss_family)
PAIR = {"policy_chosen": [-10.0], "policy_rejected": [-12.0], "reference_chosen": [-11.0], "reference_rejected": [-11.0]}
EQUAL = {k: [-5.0] for k in PAIR}
# a reference that prefers the chosen response more than the policy does: r_w = -1, r_l = +1, Δ = -2;
# reference-free (reference read as 0): r_w = -10, r_l = -12, Δ = +2
REFPAIR = {"policy_chosen": [-10.0], "policy_rejected": [-12.0], "reference_chosen": [-9.0], "reference_rejected": [-13.0]}
# two pairs for AOT's sorting: r_w = [1, -1], r_l = [-2, 5]; policy margins [2, -3], reference margins [-1, 3]
AOT2 = {"policy_chosen": [-10.0, -12.0], "policy_rejected": [-12.0, -9.0],
        "reference_chosen": [-11.0, -11.0], "reference_rejected": [-10.0, -14.0]}
WPO = {**PAIR, "policy_chosen_avg": [-0.5], "policy_rejected_avg": [-0.8]}
# LD-DPO: chosen 4 tokens, rejected 8 (the longer); shared length 4
LD = {**PAIR, "policy_chosen_tokens": [4.0], "policy_rejected_tokens": [8.0]}
NLL = {"policy_chosen": [-3.0, -5.0], "policy_chosen_tokens": [2.0, 6.0]}
# the rejected response with real and corrupted media: r(y_l | m) = -12 - (-11) = -1, r(y_l | m̃) = -9 - (-10) = +1
COND_REJ = {"policy_rejected": [-12.0], "reference_rejected": [-11.0],
            "policy_rejected_corrupt": [-9.0], "reference_rejected_corrupt": [-10.0]}

# name -> [(inputs, params, expected losses, expected (chosen, rejected) rewards or None)]
MORE_CASES = {
    "exo_pair": [  # σ(x)[log σ(x) - log(1-ε)] + σ(-x)[log σ(-x) - log ε], x = βΔ
        (PAIR, {}, [sig(0.2) * (logsig(0.2) - math.log(0.999)) + sig(-0.2) * (logsig(-0.2) - math.log(0.001))],
         ([0.1], [-0.1])),
        (PAIR, {"beta": 1.0, "label_smoothing": 0.1},
         [sig(2.0) * (logsig(2.0) - math.log(0.9)) + sig(-2.0) * (logsig(-2.0) - math.log(0.1))], ([1.0], [-1.0])),
        (EQUAL, {}, [0.5 * (math.log(0.5) - math.log(0.999)) + 0.5 * (math.log(0.5) - math.log(0.001))],
         ([0.0], [0.0])),
        (REFPAIR, {"reference_free": True},
         [sig(0.2) * (logsig(0.2) - math.log(0.999)) + sig(-0.2) * (logsig(-0.2) - math.log(0.001))],
         ([-1.0], [-1.2])),
    ],
    "aot": [
        (PAIR, {}, [-logsig(0.2)], ([0.1], [-0.1])),  # one pair: DPO
        # sorted policy margins [-3, 2] minus sorted reference margins [-1, 3] -> δ = [-2, -1]
        (AOT2, {}, [-logsig(-0.2), -logsig(-0.1)], ([0.1, -0.1], [-0.2, 0.5])),
        (AOT2, {"label_smoothing": 0.2}, [-0.8 * logsig(-0.2) - 0.2 * logsig(0.2), -0.8 * logsig(-0.1) - 0.2 * logsig(0.1)],
         ([0.1, -0.1], [-0.2, 0.5])),
        # reference-free: sorted policy margins [-3, 2] against 0
        (AOT2, {"reference_free": True}, [-logsig(-0.3), -logsig(0.2)], ([-1.0, -1.2], [-1.2, -0.9])),
    ],
    "aot_unpaired": [
        (PAIR, {}, [-logsig(0.2)], ([0.1], [-0.1])),
        # sorted r_w [-1, 1] minus sorted r_l [-2, 5] -> δ = [1, -4]
        (AOT2, {}, [-logsig(0.1), -logsig(-0.4)], ([0.1, -0.1], [-0.2, 0.5])),
        (AOT2, {"label_smoothing": 0.1}, [-0.9 * logsig(0.1) - 0.1 * logsig(-0.1), -0.9 * logsig(-0.4) - 0.1 * logsig(0.4)],
         ([0.1, -0.1], [-0.2, 0.5])),
    ],
    "discopop": [  # (1 - m)(-log σ(x)) + m·exp(-x), m = σ(x/τ), x = βΔ
        (PAIR, {}, [-logsig(0.2) * (1 - sig(4.0)) + math.exp(-0.2) * sig(4.0)], ([0.1], [-0.1])),
        (REFPAIR, {}, [-logsig(-0.2) * (1 - sig(-4.0)) + math.exp(0.2) * sig(-4.0)], ([-0.1], [0.1])),
        (PAIR, {"discopop_tau": 1.0}, [-logsig(0.2) * (1 - sig(0.2)) + math.exp(-0.2) * sig(0.2)], ([0.1], [-0.1])),
        (EQUAL, {}, [0.5 * LN2 + 0.5], ([0.0], [0.0])),
    ],
    "wpo": [  # -exp(avg_w + avg_l) log σ(βΔ)
        (WPO, {}, [-math.exp(-1.3) * logsig(0.2)], ([0.1], [-0.1])),
        ({**WPO, "policy_chosen_avg": [0.0], "policy_rejected_avg": [0.0]}, {}, [-logsig(0.2)], ([0.1], [-0.1])),
    ],
    "ld_dpo": [
        # α = 0.5: the rejected (8 tokens) keeps 4 + 0.5·4 = 6 of 8 tokens' worth: ×0.75 for policy and reference;
        # r_w = -10 + 11 = 1, r_l = -9 + 8.25 = -0.75
        (LD, {}, [-logsig(0.1 * 1.75)], ([0.1], [-0.075])),
        (LD, {"ld_alpha": 1.0}, [-logsig(0.2)], ([0.1], [-0.1])),  # α = 1: DPO
        (LD, {"ld_alpha": 0.0}, [-logsig(0.1 * 1.5)], ([0.1], [-0.05])),  # only the shared 4 tokens: ×0.5
        ({**LD, "policy_rejected_tokens": [4.0]}, {}, [-logsig(0.2)], ([0.1], [-0.1])),  # equal lengths: DPO
        # the chosen is the longer one (8 tokens, ×0.75): r_w = -7.5 + 8.25 = 0.75, r_l = -1
        ({**LD, "policy_chosen_tokens": [8.0], "policy_rejected_tokens": [4.0]}, {}, [-logsig(0.1 * 1.75)],
         ([0.075], [-0.1])),
        (LD, {"reference_free": True}, [-logsig(0.1 * (-10 + 9))], ([-1.0], [-0.9])),
    ],
    "conditional_rejected": [  # -log σ(β[r(y_l | m̃) - r(y_l | m)]); rewards (β r(y_l | m̃), β r(y_l | m))
        (COND_REJ, {}, [-logsig(0.1 * (1 - (-1)))], ([0.1], [-0.1])),
        (COND_REJ, {"beta": 1.0}, [-logsig(2.0)], ([1.0], [-1.0])),
        ({k: [-4.0] for k in COND_REJ}, {}, [LN2], ([0.0], [0.0])),
    ],
    "nll": [
        # 8 tokens in the batch: -(-3 - 5)/8 = 1.0, spread as rows 3·2/8 and 5·2/8
        (NLL, {}, [0.75, 1.25], None),
        (NLL, {"reduction": "sequence"}, [3.0, 5.0], None),
    ],
}

# new parameters of terms that existed before: f-divergence DPO and reference_free
EXTRA_CASES = {
    "sigmoid": [
        (PAIR, {"f_divergence": "reverse_kl"}, [-logsig(0.2)], ([0.1], [-0.1])),
        # JS: f'(u) = log(2u/(1+u)) -> log σ(r_w) - log σ(r_l)
        (PAIR, {"f_divergence": "js_divergence"}, [-logsig(0.1 * (logsig(1.0) - logsig(-1.0)))], ([0.1], [-0.1])),
        # α-divergence: f'(u) = (1 - u^-α)/α -> (e^{-α r_l} - e^{-α r_w})/α
        (PAIR, {"f_divergence": "alpha_divergence"}, [-logsig(0.1 * (math.exp(0.5) - math.exp(-0.5)) / 0.5)],
         ([0.1], [-0.1])),
        (PAIR, {"f_divergence": "alpha_divergence", "f_alpha": 0.2},
         [-logsig(0.1 * (math.exp(0.2) - math.exp(-0.2)) / 0.2)], ([0.1], [-0.1])),
        # forward KL: f'(u) = 1 - 1/u, the α = 1 case
        (PAIR, {"f_divergence": "forward_kl"}, [-logsig(0.1 * (math.e - 1 / math.e))], ([0.1], [-0.1])),
        (EQUAL, {"f_divergence": "js_divergence"}, [LN2], ([0.0], [0.0])),
        (REFPAIR, {}, [-logsig(-0.2)], ([-0.1], [0.1])),
        (REFPAIR, {"reference_free": True}, [-logsig(0.2)], ([-1.0], [-1.2])),
        (REFPAIR, {"reference_free": True, "label_smoothing": 0.1}, [-0.9 * logsig(0.2) - 0.1 * logsig(-0.2)],
         ([-1.0], [-1.2])),
    ],
    "ipo": [  # reference-free IPO: (avg_w - avg_l - 1/(2β))²
        ({"policy_chosen_avg": [-0.5], "policy_rejected_avg": [-0.8], "reference_chosen_avg": [-0.1],
          "reference_rejected_avg": [-0.9]}, {"reference_free": True}, [(0.3 - 5.0) ** 2], ([-0.05], [-0.08])),
    ],
    "hinge": [(REFPAIR, {"reference_free": True}, [1 - 0.2], ([-1.0], [-1.2]))],
    "robust": [(REFPAIR, {"reference_free": True, "label_smoothing": 0.1},
                [(-0.9 * logsig(0.2) + 0.1 * logsig(-0.2)) / 0.8], ([-1.0], [-1.2]))],
    "nca_pair": [(REFPAIR, {"reference_free": True},
                  [-logsig(-1.0) - 0.5 * logsig(1.0) - 0.5 * logsig(1.2)], ([-1.0], [-1.2]))],
    "sppo_hard": [(REFPAIR, {"reference_free": True}, [(-10 - 5.0) ** 2 + (-12 + 5.0) ** 2], ([-1.0], [-1.2]))],
    "apo_zero": [(REFPAIR, {"reference_free": True}, [(1 - sig(-1.0)) + sig(-1.2)], ([-1.0], [-1.2]))],
    "apo_down": [(REFPAIR, {"reference_free": True}, [sig(-1.0) + (1 - sig(0.2))], ([-1.0], [-1.2]))],
    # δ = mean(β r_w, β r_l) = -1.1 after this batch: -log σ(-1.0 + 1.1) - log σ(-(-1.2 + 1.1))
    "bco_pair": [(REFPAIR, {"reference_free": True}, [-logsig(0.1) - logsig(0.1)], ([-1.0], [-1.2]))],
}


def tensors(inputs: dict, dtype=torch.float64) -> dict:
    return {k: torch.tensor(v, dtype=dtype) for k, v in inputs.items()} | {"reward_shift": RunningMean()}


def _check(name, inputs, params, expected, rewards, spec=None):
    spec = spec or LOSSES[name]
    x = tensors(inputs)
    losses, chosen_r, rejected_r = spec.fn(**{n: x[n] for n in spec.inputs}, **params)
    assert losses.tolist() == pytest.approx(expected, abs=1e-12)
    if rewards is None:
        assert chosen_r is None and rejected_r is None
    else:
        assert chosen_r.tolist() == pytest.approx(rewards[0], abs=1e-12)
        assert rejected_r.tolist() == pytest.approx(rewards[1], abs=1e-12)


@pytest.mark.parametrize("name, i", [(n, i) for n, cases in MORE_CASES.items() for i in range(len(cases))])
def test_loss_matches_hand_computed(name, i):
    _check(name, *MORE_CASES[name][i])


@pytest.mark.parametrize("name, i", [(n, i) for n, cases in EXTRA_CASES.items() for i in range(len(cases))])
def test_new_parameters_match_hand_computed(name, i):
    _check(name, *EXTRA_CASES[name][i])


# the pairwise ones; the listwise terms' switch (K responses) is tested in test_k_responses.py
REFERENCE_FREE = sorted(n for n, s in LOSSES.items() if "reference_free" in s.hyper and "responses" not in s.sequences)


def test_reference_free_is_offered_by_the_pairwise_reference_terms():
    assert set(REFERENCE_FREE) == {"sigmoid", "robust", "ipo", "hinge", "apo_zero", "apo_down", "nca_pair",
                                   "bco_pair", "sppo_hard", "exo_pair", "aot", "aot_unpaired", "discopop", "wpo",
                                   "ld_dpo"}
    assert all(LOSSES[n].needs_reference for n in REFERENCE_FREE)


@pytest.mark.parametrize("name", REFERENCE_FREE)
def test_reference_free_term_needs_no_reference_and_reads_it_as_zero(name):
    """The bound spec drops the reference inputs; its value is the loss with every reference log-prob at 0."""
    term = validate_terms([{"name": name, "reference_free": True}])[0]
    spec = term["spec"]
    assert not spec.needs_reference and not spec.reference_sequences
    assert spec.sequences == LOSSES[name].sequences and spec.compares == ("chosen", "rejected")
    assert all(not n.startswith("reference_") for n in spec.inputs)
    g = torch.Generator().manual_seed(0)
    x = {n: -1 - 10 * torch.rand(3, generator=g, dtype=torch.float64) for n in LOSSES[name].inputs
         if n != "reward_shift"}
    for n in x:
        if n.endswith("_tokens"):
            x[n] = torch.tensor([2.0, 5.0, 7.0], dtype=torch.float64)
    zeros = {n: torch.zeros_like(v) if n.startswith("reference_") else v for n, v in x.items()}
    bound = spec.fn(**{n: x[n] for n in spec.inputs if n != "reward_shift"},
                    **({"reward_shift": RunningMean()} if "reward_shift" in spec.inputs else {}), **term["params"])
    direct = LOSSES[name].fn(**zeros, **({"reward_shift": RunningMean()} if "reward_shift" in LOSSES[name].inputs
                                         else {}), **{k: v for k, v in term["params"].items() if k != "reference_free"})
    for a, b in zip(bound, direct):
        torch.testing.assert_close(a, b)
    assert validate_terms([{"name": name}])[0]["spec"] is LOSSES[name]  # off: the plain spec


def test_f_divergence_alpha_one_is_forward_kl_and_small_alpha_tends_to_dpo():
    x = tensors(AOT2)
    x.pop("reward_shift")
    fwd = LOSSES["sigmoid"].fn(**x, f_divergence="forward_kl")[0]
    torch.testing.assert_close(LOSSES["sigmoid"].fn(**x, f_divergence="alpha_divergence", f_alpha=1.0)[0], fwd)
    near = LOSSES["sigmoid"].fn(**x, f_divergence="alpha_divergence", f_alpha=1e-7)[0]
    torch.testing.assert_close(near, LOSSES["sigmoid"].fn(**x)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("f", ["forward_kl", "js_divergence", "alpha_divergence"])
@pytest.mark.parametrize("m", [1e6, -1e6])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_f_divergences_stay_finite_at_large_margins(f, m, dtype):
    pc = torch.tensor([-1.0 - max(0.0, -m)] * 2, dtype=dtype, requires_grad=True)
    pr = torch.tensor([-1.0 - max(0.0, m)] * 2, dtype=dtype, requires_grad=True)
    ref = torch.tensor([-1 - abs(m) / 2] * 2, dtype=dtype)
    losses = LOSSES["sigmoid"].fn(pc, pr, ref, ref, f_divergence=f, beta=10.0, f_alpha=0.01)[0]
    losses.sum().backward()
    assert torch.isfinite(losses).all() and torch.isfinite(pc.grad).all() and torch.isfinite(pr.grad).all()
    assert (losses < 1e-6).all() if m > 0 else (losses > 1).all()


@pytest.mark.parametrize("terms, message", [
    ([{"name": "sigmoid", "f_divergence": "kl"}], r"f_divergence must be one of"),
    ([{"name": "sigmoid", "f_divergence": "alpha_divergence", "f_alpha": 0.0}], r"f_alpha must be in \(0.0, 1.0\]"),
    ([{"name": "exo_pair", "label_smoothing": 0.0}], r"\(exo_pair\): label_smoothing must be in \(0.0, 0.5\)"),
    ([{"name": "aot", "label_smoothing": 0.5}], r"\(aot\): label_smoothing"),
    ([{"name": "aot_unpaired", "label_smoothing": -0.1}], r"\(aot_unpaired\): label_smoothing"),
    ([{"name": "discopop", "discopop_tau": 0.0}], r"discopop_tau must be in"),
    ([{"name": "discopop", "discopop_tau": 2.0}], r"discopop_tau must be in"),
    ([{"name": "ld_dpo", "ld_alpha": 1.5}], r"ld_alpha must be in \[0.0, 1.0\]"),
    ([{"name": "nll", "reduction": "mean"}], r"reduction must be one of \['batch_tokens', 'sequence'\]"),
    ([{"name": "sigmoid", "reference_free": "yes"}], r"reference_free must be true or false"),
    ([{"name": "dpop", "reference_free": True}], r"\(dpop\): unknown parameter"),  # its penalty needs π_ref
    ([{"name": "kto", "reference_free": True}], r"\(kto\): unknown parameter"),
])
def test_bad_parameters_fail_at_start_up_naming_the_term(terms, message):
    with pytest.raises(ValueError, match=r"model\.losses\[0\].*" + message):
        validate_terms(terms)


def test_aot_rows_are_ranks_not_pairs():
    """Swapping the pairs of a batch does not change AOT's losses (it sorts), but does swap the rewards."""
    x = tensors(AOT2)
    x.pop("reward_shift")
    swapped = {k: v.flip(0) for k, v in x.items()}
    for name in ("aot", "aot_unpaired"):
        a, b = LOSSES[name].fn(**x), LOSSES[name].fn(**swapped)
        torch.testing.assert_close(a[0], b[0])
        torch.testing.assert_close(a[1], b[1].flip(0))


def test_ld_dpo_longer_response_weighs_less():
    """The excess tokens of the longer (rejected) response count α: its gradient shrinks, the shorter's not."""
    x = {k: torch.tensor(v, dtype=torch.float64, requires_grad=k.startswith("policy_") and "tokens" not in k)
         for k, v in LD.items()}
    LOSSES["ld_dpo"].fn(**x)[0].sum().backward()
    g = {k: x[k].grad.clone() for k in ("policy_chosen", "policy_rejected")}
    dpo = {k: torch.tensor(v, dtype=torch.float64, requires_grad=k.startswith("policy_")) for k, v in PAIR.items()}
    LOSSES["sigmoid"].fn(**dpo)[0].sum().backward()
    ld_sig, dpo_sig = sig(-0.175), sig(-0.2)  # |dloss/dΔ| / β of each
    assert float(g["policy_chosen"]) == pytest.approx(-0.1 * ld_sig)
    assert float(g["policy_rejected"]) == pytest.approx(0.1 * ld_sig * 0.75)
    assert float(dpo["policy_rejected"].grad) == pytest.approx(0.1 * dpo_sig)


@pytest.mark.parametrize("tau", [0.05, 0.1, 0.5])
def test_discopop_slope_at_zero(tau):
    """d/dx at x = βΔ = 0 is (1 - ln 2)/(4τ) - 3/4 (from m' = 1/(4τ), m = 1/2): positive below τ ≈ 0.102, so
    with the paper's τ = 0.05 a pair whose policy equals the reference is first pushed the wrong way."""
    x = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    zero = torch.zeros(1, dtype=torch.float64)
    LOSSES["discopop"].fn(x, zero, zero, zero, beta=1.0, discopop_tau=tau)[0].sum().backward()
    assert float(x.grad) == pytest.approx((1 - LN2) / (4 * tau) - 0.75, abs=1e-12)


# ---- each trains: a tiny synthetic policy (a table of next-token logits) moves the right way ----
CHOSEN = [[0, 1, 2], [1, 1]]
REJECTED = [[3, 4, 3, 4, 0], [2, 0, 3]]


def _seq_logps(table: torch.Tensor, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    logp = table.log_softmax(-1)
    sums = torch.stack([sum(logp[t, tok] for t, tok in enumerate(s)) for s in seqs])
    return sums, torch.tensor([float(len(s)) for s in seqs], dtype=table.dtype)


def _inputs(table, ref_table, names):
    (pc, nc), (pr, nr) = _seq_logps(table, CHOSEN), _seq_logps(table, REJECTED)
    with torch.no_grad():
        rc, rr = _seq_logps(ref_table, CHOSEN)[0], _seq_logps(ref_table, REJECTED)[0]
    values = {"policy_chosen": pc, "policy_rejected": pr, "reference_chosen": rc, "reference_rejected": rr,
              "policy_chosen_avg": pc / nc, "policy_rejected_avg": pr / nr, "reference_chosen_avg": rc / nc,
              "reference_rejected_avg": rr / nr, "policy_chosen_tokens": nc, "policy_rejected_tokens": nr,
              "reward_shift": RunningMean()}
    return {n: values[n] for n in names}


TRAINS = [("exo_pair", {}), ("aot", {}), ("aot_unpaired", {}), ("discopop", {}), ("wpo", {}), ("ld_dpo", {}),
          ("ld_dpo", {"ld_alpha": 0.0}), ("nll", {}), ("nll", {"reduction": "sequence"}),
          ("sigmoid", {"f_divergence": "js_divergence"}), ("sigmoid", {"f_divergence": "alpha_divergence"}),
          ("sigmoid", {"f_divergence": "forward_kl"}), ("sigmoid", {"reference_free": True}),
          ("hinge", {"reference_free": True}), ("exo_pair", {"reference_free": True})]


@pytest.mark.parametrize("name, params", TRAINS)
def test_trains_on_a_tiny_synthetic_policy(name, params):
    torch.manual_seed(0)
    table = torch.nn.Parameter(0.1 * torch.randn(5, 5, dtype=torch.float64))
    ref_table = table.detach().clone()
    if name == "discopop":  # at βΔ = 0 DiscoPOP's slope is positive (see docs/methods.md): start past it,
        for s in CHOSEN:    # with a reference that finds the chosen responses less likely (βΔ ≈ 0.5)
            for t, tok in enumerate(s):
                ref_table[t, tok] -= 1.0
    spec = validate_terms([{"name": name, **params}])[0]["spec"]
    opt = torch.optim.Adam([table], lr=0.05)

    def step():
        out = spec.fn(**_inputs(table, ref_table, spec.inputs), **{**spec.hyper, **params})
        return out[0].mean()

    def margin():
        with torch.no_grad():
            (pc, _), (pr, _) = _seq_logps(table, CHOSEN), _seq_logps(table, REJECTED)
            return float((pc - pr).sum()), float(pc.sum())

    first, (m0, c0) = float(step().detach()), margin()
    for _ in range(40):
        opt.zero_grad()
        step().backward()
        opt.step()
    last, (m1, c1) = float(step().detach()), margin()
    assert last < first, (first, last)
    if name == "nll":
        assert c1 > c0  # the chosen responses became more likely
    else:
        assert m1 > m0  # chosen over rejected


# ---- the module: a reference-free term builds no reference model; token counts reach a term ----
def test_reference_free_sigmoid_builds_no_reference_model(tiny_lm):
    from anyalign.logprobs import SeqLogps
    from anyalign.module import AlignModule
    module = AlignModule(lm=tiny_lm, losses=[{"name": "sigmoid", "reference_free": True}, {"name": "nll"}])
    assert module.reference.name == "none" and not module.reference.runs_model
    assert module.reference.held_tensors() == [] and not module.reference.sequences
    assert module.sequences == ["chosen", "rejected"] and module.reward_term == "sigmoid"
    policy = SeqLogps(torch.tensor([-1.0, -2.0, -4.0, -1.0]), torch.tensor([2.0, 4.0, 6.0, 2.0]))
    batch = {"index": {"chosen": torch.tensor([0, 2]), "rejected": torch.tensor([1, 3])}}
    loss, outputs = module.loss_terms(policy, None, batch)
    dpo = [-logsig(0.1 * (-1 + 2)), -logsig(0.1 * (-4 + 1))]
    assert outputs[0].losses.tolist() == pytest.approx(dpo, abs=1e-6)
    assert outputs[1].losses.mean().item() == pytest.approx(5 / 8)  # (1 + 4) over 2 + 6 tokens
    assert float(loss) == pytest.approx(sum(dpo) / 2 + 5 / 8, abs=1e-6)
    with pytest.raises(ValueError, match="need a reference model"):
        AlignModule(lm=tiny_lm, reference="none", losses=[{"name": "sigmoid", "reference_free": True},
                                                          {"name": "ipo"}])


def test_ld_dpo_takes_token_counts_from_the_step(tiny_lm):
    from anyalign.logprobs import SeqLogps
    from anyalign.module import AlignModule
    module = AlignModule(lm=tiny_lm, losses=[{"name": "ld_dpo"}])
    assert module.reference.name == "frozen_copy" and module.reference.sequences == ["chosen", "rejected"]
    policy = SeqLogps(torch.tensor([-10.0, -12.0]), torch.tensor([4.0, 8.0]))
    reference = SeqLogps(torch.tensor([-11.0, -11.0]), torch.tensor([4.0, 8.0]))
    batch = {"index": {"chosen": torch.tensor([0]), "rejected": torch.tensor([1])}}
    _, outputs = module.loss_terms(policy, reference, batch)
    assert outputs[0].losses.tolist() == pytest.approx([-logsig(0.175)], abs=1e-6)  # as the LD case above


def test_reference_free_fit_runs_without_a_reference(tmp_path, monkeypatch):
    """Two optimizer steps of a real fit with a reference-free DPO term and the batch-token NLL."""
    from conftest import ROOT

    from anyalign.__main__ import main
    monkeypatch.chdir(ROOT)
    losses = [{"name": "sigmoid", "reference_free": True}, {"name": "nll", "weight": 0.1}]
    main(["fit", "--config", "configs/image_dpo.yaml", "--trainer.max_steps", "2", "--data.batch_size", "4",
          "--trainer.enable_progress_bar", "false", "--trainer.num_sanity_val_steps", "0",
          "--trainer.limit_val_batches", "1", "--trainer.default_root_dir", str(tmp_path), "--data.num_workers", "0",
          "--model.export_dir", "null", "--trainer.logger", "false", "--trainer.callbacks", "[]",
          "--model.losses", json.dumps(losses)])
