"""The rejected answer under corrupted media (``rejected_corrupt``, ``conditional_rejected``), class-aware swap
donors (``donor_pick: other_answer``) and per-parameter-group learning rates (``model.lr_groups``): the loss against a
hand computation, its rows built under corrupted media (pairs and K-response samples), gradients, what the data
module derives from the terms, and the optimizer's groups."""
import math
from types import SimpleNamespace

import pytest
import torch

from anyalign.data.collate import Collator
from anyalign.data.negatives import corrupt_examples, validate_negatives
from anyalign.losses import LOSSES, validate_terms
from anyalign.sequences import SEQUENCES, Needs

from test_negatives import _Stub


def logsig(x):  # log σ(x), written out so the expected values do not reuse torch's formula
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def test_conditional_rejected_matches_hand_computation_and_flows():
    spec = LOSSES["conditional_rejected"]
    assert spec.sequences == {"rejected", "rejected_corrupt"} and spec.needs_reference
    assert spec.compares == ("rejected_corrupt", "rejected")
    kind = SEQUENCES["rejected_corrupt"]
    assert kind.response == "rejected" and kind.corrupted_media and kind.precomputable
    # r(y_l | m) = -10 - (-11) = 1, r(y_l | m̃) = -12 - (-11.5) = -0.5: the rejected answer gained with the real
    # media, so the loss is -log σ(β(-0.5 - 1)); second pair met the term: r(y_l|m) = -2, r(y_l|m̃) = 0.5
    pl = torch.tensor([-10.0, -7.0], dtype=torch.float64, requires_grad=True)
    plc = torch.tensor([-12.0, -4.5], dtype=torch.float64, requires_grad=True)
    rl, rlc = torch.tensor([-11.0, -5.0], dtype=torch.float64), torch.tensor([-11.5, -5.0], dtype=torch.float64)
    losses, a, b = spec.fn(policy_rejected_corrupt=plc, reference_rejected_corrupt=rlc, policy_rejected=pl,
                           reference_rejected=rl, beta=0.5)
    expected = [-logsig(0.5 * (-0.5 - 1.0)), -logsig(0.5 * (0.5 - (-2.0)))]
    torch.testing.assert_close(losses, torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(a, torch.tensor([-0.25, 0.25], dtype=torch.float64))  # β r(y_l | m̃)
    torch.testing.assert_close(b, torch.tensor([0.5, -1.0], dtype=torch.float64))  # β r(y_l | m)
    losses.sum().backward()
    assert (pl.grad > 0).all() and (plc.grad < 0).all()  # descent lowers y_l under m, raises it under m̃
    assert validate_terms([{"name": "conditional_rejected"}])[0]["params"] == {"beta": 0.1}


def test_rows_of_both_kinds_are_built_under_corrupted_media(image_model):
    from test_model import _examples
    exs = _examples(image_model)
    n, adapters = len(exs), dict(image_model.adapters.items())
    spec = validate_negatives({"image": [{"op": "null"}]}, adapters)
    pad = image_model.tokenizer.pad_token_id
    default = Collator("shared", pad, adapters, 1, spec)(exs)
    assert "rejected_corrupt" not in default["index"]  # built only when asked for (a term scores it)
    kinds = ("chosen_corrupt", "rejected_corrupt")
    batch = Collator("shared", pad, adapters, 1, spec, corrupt_kinds=kinds)(exs)
    assert batch["input_ids"].shape[0] == 2 * n  # shared: both under one corrupted media, one row per sample
    assert torch.equal(batch["media"]["image"][n:], torch.full_like(batch["media"]["image"][:n], -1.0))
    concat = Collator("concatenated", pad, adapters, 1, spec, corrupt_kinds=kinds)(exs)
    assert concat["input_ids"].shape[0] == 4 * n  # two rows per pair, two corrupted rows per pair
    with torch.no_grad():
        out, out2 = image_model(batch), image_model(concat)
    ix, ix2 = batch["index"], concat["index"]
    for side in ("chosen", "rejected"):
        assert torch.equal(out.tokens[ix[side]], out.tokens[ix[f"{side}_corrupt"]])
        assert not torch.allclose(out.logps[ix[side]], out.logps[ix[f"{side}_corrupt"]])
        torch.testing.assert_close(out.logps[ix[f"{side}_corrupt"]], out2.logps[ix2[f"{side}_corrupt"]],
                                   atol=1e-4, rtol=0)  # the shared corrupted row equals rows of their own


def test_k_response_samples_score_their_worst_response_under_corrupted_media():
    from test_packing import _model_data_examples
    model, data, exs = _model_data_examples("video_dpo", 2)
    k_exs = [{**ex, "responses": {"response_0": ex["responses"]["rejected"], "response_1": ex["responses"]["chosen"],
                                  "response_2": ex["responses"]["rejected"][:-1]}, "ranks": [1, 0, 2]} for ex in exs]
    batch = Collator("shared", model.tokenizer.pad_token_id, dict(model.adapters.items()), 8, data.held_out_negatives,
                     data.seed, corrupt_kinds=("chosen_corrupt", "rejected_corrupt"))(k_exs)
    with torch.no_grad():
        out = model(batch)
    ix = batch["index"]
    for i, ex in enumerate(k_exs):  # worst: response_2 (rank 2); best: response_1
        assert int(out.tokens[ix["rejected_corrupt"][i]]) == len(ex["responses"]["response_2"])
        assert int(out.tokens[ix["chosen_corrupt"][i]]) == len(ex["responses"]["response_1"])
        assert ix["rejected"][i] == ix["responses"][i, 2]
    assert not torch.allclose(out.logps[ix["rejected"]], out.logps[ix["rejected_corrupt"]])


def test_module_trains_the_rejected_term_and_data_builds_its_rows(tiny_lm, tiny_vit, tmp_path):
    from anyalign.data.module import PreferenceDataModule
    from anyalign.module import AlignModule
    from modalities import ImageAdapter
    from test_model import _examples
    torch.manual_seed(0)
    module = AlignModule(lm=tiny_lm, adapters={"image": ImageAdapter(encoder=tiny_vit)},
                         losses=[{"name": "sigmoid"}, {"name": "conditional_rejected"}],
                         negatives={"image": [{"op": "null"}]})
    assert module.needs.corrupt_kinds == ("rejected_corrupt",) and module.reference.name == "frozen_copy"
    data = PreferenceDataModule(train_shards="assets/data/image/train-000.tar")
    data.bind(module.policy, module.negatives, module.needs)
    assert data.corrupt_kinds == ("rejected_corrupt",)
    fp = data.reference_fingerprint(["chosen", "rejected", "rejected_corrupt"])  # a precomputed cache is per seed
    assert fp["seed"] == data.seed and fp["negatives"] == {"image": [["null", 1.0, {}]]}
    model = module.policy
    batch = Collator("shared", model.tokenizer.pad_token_id, dict(model.adapters.items()), 1, module.negatives,
                     corrupt_kinds=module.needs.corrupt_kinds)(_examples(model))
    assert set(batch["index"]) == {"chosen", "rejected", "rejected_corrupt"}
    module.reference.setup(model, torch.device("cpu"), share_frozen=True)
    with torch.no_grad():  # move the policy off the reference so the term is not at its symmetric point
        for p in model.lm.parameters():
            p.add_(0.01 * torch.randn_like(p))
    out = model(batch)
    loss, outputs = module.loss_terms(out, module.reference(batch, None), batch)
    loss.backward()
    assert [o.name for o in outputs] == ["sigmoid", "conditional_rejected"]
    assert model.adapters["image"].projector[0].weight.grad.abs().sum() > 0


def test_precomputed_reference_refuses_a_swap_donor_for_the_rejected_row(tiny_lm, tiny_vit, tmp_path):
    from anyalign.module import AlignModule
    from modalities import ImageAdapter
    with pytest.raises(ValueError, match="take their donor from the batch"):
        AlignModule(lm=tiny_lm, adapters={"image": ImageAdapter(encoder=tiny_vit)},
                    losses=[{"name": "sigmoid"}, {"name": "conditional_rejected"}],
                    negatives={"image": [{"op": "swap"}]}, reference="precomputed", reference_cache=str(tmp_path))


def _class_examples(answers):
    return [{"key": f"k{i}", "responses": {"chosen": [a, 1], "rejected": [9, 1]},
             "media": {"video": [torch.full((2, 3, 4, 4), float(i))]}} for i, a in enumerate(answers)]


@pytest.mark.parametrize("seed", range(6))
def test_other_answer_donor_comes_from_another_class(seed):
    exs = _class_examples([0, 0, 0, 0, 0, 1])  # five of class 0, one of class 1
    spec = validate_negatives({"video": [{"op": "swap", "donor_pick": "other_answer"}]}, {"video": _Stub()})
    out = corrupt_examples(exs, spec, {"video": _Stub()}, seed)
    donors = [int(m["video"][0][0, 0, 0, 0]) for m in out]
    assert donors[:5] == [5] * 5  # every class-0 sample takes the only class-1 sample's clip
    assert donors[5] in range(5)
    same = corrupt_examples(_class_examples([0] * 4), spec, {"video": _Stub()}, seed)  # none differs: any other
    assert all(int(m["video"][0][0, 0, 0, 0]) != i for i, m in enumerate(same))
    plain = validate_negatives({"video": [{"op": "swap"}]}, {"video": _Stub()})  # the default is unchanged
    assert [torch.equal(a["video"][0], b["video"][0]) for a, b in
            zip(corrupt_examples(exs, plain, {"video": _Stub()}, seed),
                corrupt_examples(exs, validate_negatives({"video": [{"op": "swap", "donor_pick": "any"}]},
                                                         {"video": _Stub()}), {"video": _Stub()}, seed))] == [True] * 6


@pytest.mark.parametrize("entry, message", [({"op": "swap", "donor_pick": "same"}, "donor_pick='same'"),
                                            ({"op": "reverse", "donor_pick": "other_answer"}, "unknown parameter")])
def test_bad_donor_pick_fails_at_startup(entry, message):
    with pytest.raises(ValueError, match=message):
        validate_negatives({"video": [entry]}, {"video": _Stub()})


def test_lr_groups_give_the_projector_its_own_learning_rate(tiny_lm, tiny_vit):
    from anyalign.module import AlignModule
    from modalities import ImageAdapter

    def groups(**kw):
        m = AlignModule(lm=tiny_lm, adapters={"image": ImageAdapter(encoder=tiny_vit)}, lr=1e-3, **kw)
        m._trainer = SimpleNamespace(max_steps=10)
        try:
            return m, m.configure_optimizers()["optimizer"].param_groups
        finally:
            m._trainer = None

    m, plain = groups()
    assert len(plain) == 1 and plain[0]["lr"] == 1e-3
    m, split = groups(lr_groups={"adapters.*.projector.*": 1e-2})
    projector = {id(p) for p in m.policy.adapters["image"].projector.parameters()}
    assert [g["lr"] for g in split] == [1e-3, 1e-2]  # the LM's group first (the logged lr)
    assert {id(p) for p in split[1]["params"]} == projector
    assert not projector & {id(p) for p in split[0]["params"]}
    assert sum(len(g["params"]) for g in split) == len(plain[0]["params"])
    with pytest.raises(ValueError, match="lr_groups.*match"):
        groups(lr_groups={"adapter.projector": 1e-2})


def test_needs_lists_the_corrupted_kinds():
    assert Needs(("chosen", "chosen_corrupt", "rejected", "rejected_corrupt")).corrupt_kinds == \
        ("chosen_corrupt", "rejected_corrupt")
    assert Needs(("chosen", "rejected")).corrupt_kinds == ()
