"""Corruption operators and conditional negatives: shapes kept, content changed, seeded, swap never
picks the sample itself; the collated batch scores the chosen response under corrupted media."""
import pytest
import torch

from anyalign.data.collate import Collator
from anyalign.data.negatives import corrupt_examples, validate_negatives
from modalities.base import needs_donor
from modalities.corruptions import AUDIO_OPS, IMAGE_OPS, MULTI_IMAGE_OPS, VIDEO_OPS


def _items(kind: str, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {"image": [(3, 32, 32)], "multi_image": [(3, 32, 32)] * 3, "video": [(8, 3, 32, 32)],
              "audio": [(16000,)]}[kind]
    return [torch.rand(s, generator=g) * 2 - 1 for s in shapes]


CASES = [(kind, op) for kind, ops in [("image", IMAGE_OPS), ("multi_image", MULTI_IMAGE_OPS), ("video", VIDEO_OPS),
                                      ("audio", AUDIO_OPS)] for op in ops]
OPS = {"image": IMAGE_OPS, "multi_image": MULTI_IMAGE_OPS, "video": VIDEO_OPS, "audio": AUDIO_OPS}


@pytest.mark.parametrize("kind, op", CASES)
def test_operator_keeps_shape_changes_content_and_is_seeded(kind, op):
    items, donor = _items(kind, 0), _items(kind, 1)
    fn = OPS[kind][op]
    run = lambda: fn(items, torch.Generator().manual_seed(7), donor=donor if needs_donor(fn) else None)
    out = run()
    assert [x.shape for x in out] == [x.shape for x in items]
    assert [x.dtype for x in out] == [x.dtype for x in items]
    assert any(not torch.equal(a, b) for a, b in zip(out, items)), f"{kind}.{op} left the media unchanged"
    assert all(torch.equal(a, b) for a, b in zip(out, run())), f"{kind}.{op} is not deterministic under a seed"
    assert all(torch.equal(a, b) for a, b in zip(items, _items(kind, 0))), f"{kind}.{op} modified its input"


def test_crop_keep_keeps_a_small_area():
    # a horizontal ramp: a crop of <= 20 % of the area spans a narrow band of the ramp's values
    x = torch.linspace(-1, 1, 64).expand(3, 64, 64).clone()
    y = IMAGE_OPS["crop_keep"]([x], torch.Generator().manual_seed(0))[0]
    assert (y.max() - y.min()) < 0.9 * (x.max() - x.min())


class _Stub:
    operators = VIDEO_OPS

    def corrupt(self, items, op, rng, donor=None, **params):
        return self.operators[op](items, rng, donor=donor, **params)


@pytest.mark.parametrize("seed", range(5))
def test_swap_never_picks_the_sample_itself(seed):
    examples = [{"key": f"k{i}", "media": {"video": [torch.full((2, 3, 4, 4), float(i))]}} for i in range(4)]
    spec = validate_negatives({"video": [{"op": "swap"}]}, {"video": _Stub()})
    out = corrupt_examples(examples, spec, {"video": _Stub()}, seed)
    for i, media in enumerate(out):
        assert media["video"][0][0, 0, 0, 0].item() != i
    single = corrupt_examples(examples[:1], spec, {"video": _Stub()}, seed)
    assert torch.equal(single[0]["video"][0], examples[0]["media"]["video"][0])  # no donor: unchanged


@pytest.mark.parametrize("negatives, message", [
    ({"video": [{"op": "explode"}]}, "not an operator of video"),
    ({"audio": [{"op": "mute"}]}, "no adapter named 'audio'"),
    ({"video": [{"op": "drop_segment", "fractoin": 0.2}]}, "unknown parameter"),
    ({"video": [{"op": "reverse", "p": 0}]}, "p must be > 0"),
    ({"video": []}, "at least one operator"),
])
def test_bad_negatives_fail_naming_the_key(negatives, message):
    with pytest.raises(ValueError, match=message):
        validate_negatives(negatives, {"video": _Stub()})


def test_conditional_without_operator_fails_at_startup(tiny_lm):
    from anyalign.module import AlignModule
    with pytest.raises(ValueError, match="model.negatives names no corruption operator"):
        AlignModule(lm=tiny_lm, losses=[{"name": "sigmoid"}, {"name": "conditional"}])


def test_batch_carries_chosen_under_corrupted_media(image_model):
    from test_model import _examples
    exs = _examples(image_model)
    adapters = dict(image_model.adapters.items())
    spec = validate_negatives({"image": [{"op": "null"}]}, adapters)
    batch = Collator("shared", image_model.tokenizer.pad_token_id, adapters, 1, spec)(exs)
    assert batch["input_ids"].shape[0] == 2 * len(exs)  # a pair row + a conditional row per sample
    assert torch.equal(batch["media"]["image"][len(exs):], torch.full_like(batch["media"]["image"][:len(exs)], -1.0))
    out = image_model(batch)
    c, cc = batch["index"]["chosen"], batch["index"]["chosen_corrupt"]
    assert torch.equal(out.tokens[c], out.tokens[cc])  # same response tokens, scored twice
    assert not torch.allclose(out.logps[c], out.logps[cc])  # under different media


def test_a_new_sequence_kind_needs_only_its_declaration_and_a_loss(tiny_lm, tiny_vit, monkeypatch):
    """A response under corrupted media, declared in the registry and used by a loss defined here: the terms'
    needs name its rows, the collator builds them and the module hands its log-probs to the loss, with no other
    change. (``rejected_blank`` is a shipped kind now; this declares one of its own.)"""
    from anyalign.losses import LOSSES, register
    from anyalign.module import AlignModule
    from anyalign.sequences import SEQUENCES, SequenceKind
    from modalities import ImageAdapter
    from test_model import _examples
    monkeypatch.setitem(SEQUENCES, "rejected_blank", SequenceKind("rejected_blank", "rejected", corrupted_media=True))
    seen = {}

    def rejected_media_gap(policy_rejected, policy_rejected_blank, beta: float = 1.0):
        seen["gap"] = (policy_rejected - policy_rejected_blank).detach()
        return (beta * (policy_rejected - policy_rejected_blank)).abs(), None, None

    register("rejected_media_gap")(rejected_media_gap)
    try:
        assert LOSSES["rejected_media_gap"].sequences == {"rejected", "rejected_blank"}
        torch.manual_seed(0)
        module = AlignModule(lm=tiny_lm, adapters={"image": ImageAdapter(encoder=tiny_vit)},
                             losses=[{"name": "rejected_media_gap"}], negatives={"image": [{"op": "null"}]})
        assert module.needs.train_negatives and module.reference.name == "none"
        model, adapters = module.policy, dict(module.policy.adapters.items())
        assert module.needs.corrupt_kinds == ("rejected_blank",)  # what the data module builds for training
        batch = Collator("shared", model.tokenizer.pad_token_id, adapters, 1, module.negatives,
                         corrupt_kinds=module.needs.corrupt_kinds)(_examples(model))
        assert set(batch["index"]) == {"chosen", "rejected", "rejected_blank"}
        out = model(batch)
        loss, _ = module.loss_terms(out, None, batch)
        r, rc = batch["index"]["rejected"], batch["index"]["rejected_blank"]
        assert torch.equal(out.tokens[r], out.tokens[rc])  # the same response, scored under other media
        torch.testing.assert_close(seen["gap"], (out.logps[r] - out.logps[rc]).detach())
        assert float(loss) > 0
    finally:
        LOSSES.pop("rejected_media_gap", None)
