"""Packed rows (``data.packing``): several pairs in one row, kept apart by the mask, positions restarting per pair.

Packing is exact: for every shipped modality (the assembled models of configs/*_dpo.yaml on their demo data,
corrupted-media rows included) packed rows give the log-probs (fp32, atol 1e-4) and gradients (atol 1e-5) of
unpacked rows; the flex BlockMask keeps groups apart as the dense mask does; the pack_order stage hands out
every example once; a precomputed reference and negatives train packed; a model that builds its own masks
trains unpacked, with a warning.
"""
import itertools
import json
import logging
import math
import random
import shutil

import lightning as L
import pytest
import torch
from lightning.pytorch.cli import LightningCLI
from torch.nn.attention.flex_attention import create_mask

from anyalign.__main__ import main
from anyalign.data import PreferenceDataModule
from anyalign.data.collate import Collator, collate_rows, group_length, pack_rows, rows_for
from anyalign.data.pipeline import Skipped, example_length, pack_order, read_shards
from anyalign.data.scan import example_stages
from anyalign.logprobs import attention_block_mask, attention_mask_4d
from anyalign.model import MultimodalLM, StepCache
from anyalign.module import AlignModule

from conftest import ROOT, separate_logp
from test_attention import eager_flex  # noqa: F401  (fixture)
from test_resume import _read

CONFIGS = ["image_dpo", "multi_image_dpo", "video_dpo", "audio_dpo", "audio_visual_dpo"]


def _model_data_examples(config: str, n: int):
    cli = LightningCLI(AlignModule, PreferenceDataModule, run=False, seed_everything_default=0,
                       parser_kwargs={"parser_mode": "omegaconf"},
                       args=["--config", str(ROOT / f"configs/{config}.yaml"), "--data.num_workers", "0",
                             "--data.packing", "true"])
    module, data = cli.model, cli.datamodule
    data.bind(module.policy, module.negatives)
    assert data.packing is True and data.pack_length == data.max_length
    src = read_shards(iter(data.val_urls))
    for stage in example_stages(data):
        src = stage(src)
    examples = list(itertools.islice((x for x in src if not isinstance(x, Skipped)), n))
    return module.policy.eval(), data, examples


def _forward(model, batch):
    model.zero_grad()
    out = model(batch)
    lp = {name: out.logps[ix] for name, ix in batch["index"].items()}
    weights = {"chosen": 1.0, "rejected": -0.5, "chosen_corrupt": 0.3}
    sum(weights[name] * v.sum() for name, v in lp.items()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in lp.items()}, out.tokens.detach(), grads


def _check_packed_rows(batch, groups_total):
    rows = batch["input_ids"].shape[0]
    per_row = [int(g.max()) + 1 for g in batch["groups"]]
    assert sum(per_row) == groups_total and rows < groups_total and max(per_row) >= 2
    for r in range(rows):  # positions restart at 0 at every group's first position
        starts = (batch["groups"][r][1:] != batch["groups"][r][:-1]).nonzero().flatten() + 1
        starts = [0] + [int(s) for s in starts if batch["groups"][r][s] >= 0]
        assert len(starts) == per_row[r]
        assert all(int(batch["position_ids"][r, s]) == 0 and int(batch["roles"][r, s]) == 0 for s in starts)


@pytest.mark.parametrize("config", CONFIGS)
def test_packed_equals_unpacked_for_every_modality(config):
    model, data, exs = _model_data_examples(config, 6)
    assert len(exs) == 6 and all(ex["media"] for ex in exs)
    adapters = dict(model.adapters.items())
    negatives = data.held_out_negatives  # a corrupted-media row per pair (media reliance), packed with the rest
    assert negatives
    unpacked = Collator("shared", model.tokenizer.pad_token_id, adapters, 8, negatives, data.seed)(exs)
    groups = unpacked["input_ids"].shape[0]
    assert groups == 2 * len(exs)  # a pair row and a corrupted-media row per example
    # rows of twice the longest group: every row holds two groups or more, media of several samples per row
    capacity = 2 * int((unpacked["roles"] >= 0).sum(1).max())
    packed = Collator("shared", model.tokenizer.pad_token_id, adapters, 8, negatives, data.seed, pack=capacity)(exs)
    _check_packed_rows(packed, groups)
    assert packed["input_ids"].shape[1] <= -(-capacity // 8) * 8
    assert int((packed["roles"] >= 0).sum()) == int((unpacked["roles"] >= 0).sum())  # no token lost or added
    lp_u, tok_u, grad_u = _forward(model, unpacked)
    lp_p, tok_p, grad_p = _forward(model, packed)
    assert set(lp_p) == {"chosen", "rejected", "chosen_corrupt"}
    assert torch.equal(tok_u[torch.cat(list(unpacked["index"].values()))],
                       tok_p[torch.cat(list(packed["index"].values()))])
    for name in lp_u:
        torch.testing.assert_close(lp_p[name], lp_u[name], atol=1e-4, rtol=1e-5, msg=name)
    with torch.no_grad():  # and both equal a plain forward per response
        for name in ("chosen", "rejected"):
            separate = torch.stack([separate_logp(model, ex, name) for ex in exs])
            torch.testing.assert_close(lp_p[name], separate, atol=1e-4, rtol=1e-5)
    assert any(n.startswith("adapters.") for n in grad_p)  # the media path gets gradients too
    assert grad_p.keys() == grad_u.keys()
    for n, g in grad_p.items():
        torch.testing.assert_close(g, grad_u[n], atol=1e-5, rtol=1e-4, msg=n)


@pytest.fixture()
def text_model(tiny_lm):
    torch.manual_seed(0)
    return MultimodalLM(tiny_lm, {}).eval()


def _text_examples(model, n=7, seed=0):
    rng = random.Random(seed)
    words = "cats purr dogs bark birds sing fish swim the a and loudly softly often never blue seven".split()

    def ids(k):
        return model.tokenizer(" ".join(rng.choice(words) for _ in range(k)), add_special_tokens=False)["input_ids"]
    exs = []
    for i in range(n):
        ex = {"key": str(i), "media": {}, "prompt": ids(rng.randint(3, 12)),
              "responses": {"chosen": ids(rng.randint(1, 30)), "rejected": ids(rng.randint(1, 30))}}
        if i % 3 == 0:  # weighted spans ride along with their tokens
            ex["weights"] = {"chosen": [rng.choice((0.5, 1.0, 2.0)) for _ in ex["responses"]["chosen"]]}
        exs.append(ex)
    return exs


@pytest.mark.parametrize("layout", ["shared", "concatenated"])
def test_packed_text_rows_both_layouts(text_model, layout):
    """Packing applies to either layout (concatenated + packed is the padding-free duplicated baseline)."""
    model, exs = text_model, _text_examples(text_model)
    rows = rows_for(exs, layout)
    capacity = 3 * max(group_length(r) for r in rows)
    unpacked = collate_rows(rows, model.tokenizer.pad_token_id, {}, len(exs))
    packed = collate_rows(rows, model.tokenizer.pad_token_id, {}, len(exs), pack=capacity)
    assert "groups" not in unpacked
    _check_packed_rows(packed, len(rows))
    lp_u, _, grad_u = _forward(model, unpacked)
    lp_p, _, grad_p = _forward(model, packed)
    for name in lp_u:
        torch.testing.assert_close(lp_p[name], lp_u[name], atol=1e-4, rtol=1e-5)
    for n, g in grad_p.items():
        torch.testing.assert_close(g, grad_u[n], atol=1e-5, rtol=1e-4, msg=n)


def test_one_group_per_row_keeps_the_plain_masks(text_model):
    """Packed rows that happen to hold one group each take the unpacked masks (a padding mask for one response)."""
    exs = _text_examples(text_model, 2)
    rows = rows_for(exs, "concatenated")
    batch = collate_rows(rows, 0, {}, len(exs), pack=1)  # every group is longer than the row: one group per row
    assert int(batch["groups"].max()) == 0 and batch["input_ids"].shape[0] == len(rows)
    mask = text_model.attention_mask(batch["roles"], torch.float32, {}, batch["groups"])
    assert mask.dim() == 2


def _spans(rows):
    """roles and groups from rows of groups of (role, length) spans, padded with -1."""
    roles, groups = [], []
    for row in rows:
        r, g = [], []
        for gi, group in enumerate(row):
            for role, n in group:
                r += [role] * n
                g += [gi] * n
        roles.append(r)
        groups.append(g)
    length = max(map(len, roles))
    pad = lambda x: [v + [-1] * (length - len(v)) for v in x]  # noqa: E731
    return torch.tensor(pad(roles)), torch.tensor(pad(groups))


def test_dense_mask_keeps_groups_apart_by_hand():
    roles, groups = _spans([[[(0, 2), (1, 1)], [(0, 1), (1, 1), (2, 1)]]])
    allowed = attention_mask_4d(roles, groups=groups)[0, 0] == 0
    expected = torch.tensor([[1, 0, 0, 0, 0, 0],
                             [1, 1, 0, 0, 0, 0],
                             [1, 1, 1, 0, 0, 0],
                             [0, 0, 0, 1, 0, 0],   # the second group's prompt restarts: it sees nothing before it
                             [0, 0, 0, 1, 1, 0],
                             [0, 0, 0, 1, 0, 1]],  # its slot 2 sees its own prompt, not its slot 1
                            dtype=torch.bool)
    assert torch.equal(allowed, expected)
    assert torch.equal(attention_mask_4d(roles), attention_mask_4d(roles, groups=None))


def test_block_mask_with_groups_equals_dense_and_skips_other_groups():
    roles, groups = _spans([[[(0, 100), (1, 60), (2, 90)], [(0, 40), (1, 70), (2, 20)]],
                            [[(0, 150), (1, 200)], [(0, 10), (1, 5)], [(0, 20), (1, 10), (2, 5)]],
                            [[(0, 300), (1, 50), (2, 30)]]])
    dense = attention_mask_4d(roles, groups=groups) == 0
    block_mask = attention_block_mask(roles, groups)
    rows, _, t, _ = dense.shape
    assert torch.equal(create_mask(block_mask.mask_mod, rows, 1, t, t, device="cpu"), dense)
    b = block_mask.BLOCK_SIZE[0]
    padded = torch.zeros(rows, 1, -(-t // b) * b, -(-t // b) * b, dtype=torch.bool)
    padded[..., :t, :t] = dense
    blocks = padded.unflatten(2, (-1, b)).unflatten(4, (-1, b))
    assert torch.equal(block_mask.to_dense().bool(), blocks.any(5).any(3))
    # the first row's second group starts at 380: its query blocks skip the first group's key blocks
    assert not block_mask.to_dense().bool()[0, 0, 380 // b + 1, :250 // b].any()


def test_flex_packed_equals_sdpa_packed(tiny_lm, tiny_vit, eager_flex):  # noqa: F811
    from modalities import ImageAdapter
    from test_model import _examples
    torch.manual_seed(0)
    model = MultimodalLM(tiny_lm, {"image": ImageAdapter(encoder=tiny_vit)}).eval()
    exs = _examples(model, 5)
    rows = rows_for(exs, "shared")
    batch = collate_rows(rows, model.tokenizer.pad_token_id, dict(model.adapters.items()), len(exs),
                         pack=2 * max(group_length(r) for r in rows) + 1)
    assert int(batch["groups"].max()) >= 1
    with torch.no_grad():
        sdpa = model(batch)
        model.lm.set_attn_implementation("flex_attention")
        cache = StepCache()
        flex = model(batch, cache)
    assert [type(m).__name__ for m in cache.masks.values()] == ["BlockMask"]
    torch.testing.assert_close(flex.logps, sdpa.logps, atol=1e-4, rtol=1e-5)


def test_pack_rows_first_fit_decreasing():
    rows = [([0] * n, {}, [("chosen", i, [1])]) for i, n in enumerate([5, 9, 2, 7, 3, 20, 1])]
    assert [group_length(r) for r in rows] == [6, 10, 3, 8, 4, 21, 2]
    packed = pack_rows(rows, 10)
    assert sorted(r[2][0][1] for row in packed for r in row) == list(range(7))  # each group once
    # longest first, each into the first row with room: 21 alone (longer than a row), 10, 8+2, 6+4, 3
    assert [[r[2][0][1] for r in row] for row in packed] == [[0, 4], [1], [2], [3, 6], [5]]
    assert all(sum(group_length(g) for g in row) <= 10 for row in packed if len(row) > 1)
    assert pack_rows(rows, 10) == packed  # deterministic


def _ex(i, n):
    return {"key": str(i), "prompt": [0] * 4, "responses": {"chosen": [1] * (n // 2), "rejected": [2] * (n - n // 2)}}


def test_pack_order_hands_out_every_example_once():
    rng = random.Random(0)
    stream = [_ex(i, rng.choice([2, 5, 40, 120, 300])) for i in range(53)]
    stream.insert(7, Skipped("u", "bad", "reason"))
    out = list(pack_order(iter(stream), 8, 256))
    assert out[0] == stream[7]  # reported at once, before the examples held in the window
    examples = [x for x in out if not isinstance(x, Skipped)]
    assert sorted(x["key"] for x in examples) == sorted(x["key"] for x in stream if not isinstance(x, Skipped))
    assert out == list(pack_order(iter(stream), 8, 256))  # a function of the stream only
    order = [int(x["key"]) for x in examples]
    # no example is held back for more than the window: it leaves within buffer + 1 batches of arriving
    for pos, i in enumerate(order):
        assert pos // 8 <= i // 8 + 3
    # the batches it forms fill rows better than the stream order does
    def rows(batch):
        return len(pack_rows([(ex["prompt"], {}, [("c", 0, ex["responses"]["chosen"] + ex["responses"]["rejected"])])
                              for ex in batch], 256))
    plain = [stream_ex for stream_ex in stream if not isinstance(stream_ex, Skipped)]
    assert sum(rows(examples[i:i + 8]) for i in range(0, 48, 8)) <= sum(rows(plain[i:i + 8]) for i in range(0, 48, 8))
    assert all(example_length(x) == len(x["prompt"]) + sum(map(len, x["responses"].values())) for x in examples)


class _NoPacking(torch.nn.Module):
    """Stands in for a model that builds its own masks (a pretrained family's FamilyLM)."""

    def __init__(self):
        super().__init__()
        self.adapters = torch.nn.ModuleDict()

    def shared_layout_unsupported_reason(self):
        return None


def test_model_without_packing_support_trains_unpacked(caplog):
    from anyalign.families.model import FamilyLM
    assert not getattr(FamilyLM, "supports_packing", False) and MultimodalLM.supports_packing
    data = PreferenceDataModule(str(ROOT / "assets/data/image/val-000.tar"), packing=True)
    with caplog.at_level(logging.WARNING, logger="anyalign"):
        data.bind(_NoPacking())
    assert data.packing is False and data.pack_length is None
    assert "data.packing" in caplog.text and "_NoPacking builds its own attention masks" in caplog.text
    for bad in (1, 0, -5, "yes"):
        with pytest.raises(ValueError, match="data.packing must be"):
            PreferenceDataModule(str(ROOT / "assets/data/image/val-000.tar"), packing=bad)
    assert PreferenceDataModule(str(ROOT / "assets/data/image/val-000.tar"), packing=300, max_length=64).pack_length == 300


class Rows(L.Callback):
    """Appends (pairs, rows, packed) of every trained batch to a JSONL file."""

    def __init__(self, path: str):
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        with open(self.path, "a") as f:
            f.write(json.dumps({"pairs": len(batch["keys"]), "rows": batch["input_ids"].shape[0],
                                "packed": "groups" in batch, "loss": float(outputs["loss"]),
                                "keys": batch["keys"]}) + "\n")


MDPO = ['--model.losses', json.dumps([{"name": "sigmoid", "beta": 0.1}, {"name": "conditional", "beta": 0.1}]),
        '--model.negatives', json.dumps({"image": [{"op": "gaussian_blur", "p": 0.5}, {"op": "null", "p": 0.5}]})]


def test_packed_fit_with_negatives_and_precomputed_reference(tmp_path, monkeypatch):
    """mDPO (a corrupted-media row per pair) with a reference precomputed on unpacked rows trains on packed rows:
    at step 0 the packed policy's values equal the stored ones (every term is log 2), and a frozen-copy
    reference gives the same losses on the same packed batches."""
    monkeypatch.chdir(ROOT)
    for name in ("train-000.tar", "val-000.tar"):
        shutil.copy(ROOT / "assets/data/image" / name, tmp_path / name)

    def args(cmd, reference, *extra, log=None):
        callbacks = [{"class_path": "test_packing.Rows", "init_args": {"path": str(log)}}] if log else []
        return [cmd, "--config", "configs/image_dpo.yaml", "--trainer.max_steps", "4", "--data.batch_size", "8",
                "--data.train_shards", str(tmp_path / "train-000.tar"), "--data.val_shards", str(tmp_path / "val-000.tar"),
                "--trainer.enable_progress_bar", "false", "--trainer.num_sanity_val_steps", "0",
                "--trainer.val_check_interval", "4", "--trainer.default_root_dir", str(tmp_path / f"run-{cmd}-{reference}"),
                "--data.num_workers", "1", "--model.export_dir", "null", "--trainer.callbacks", json.dumps(callbacks),
                "--model.reference", reference, "--model.reference_cache", str(tmp_path / "cache"), *MDPO, *extra]
    main(args("precompute", "precomputed"))  # unpacked rows
    main(args("fit", "precomputed", "--data.packing", "true", log=tmp_path / "pre.jsonl"))
    main(args("fit", "frozen_copy", "--data.packing", "true", log=tmp_path / "fc.jsonl"))
    pre, fc = _read(tmp_path / "pre.jsonl"), _read(tmp_path / "fc.jsonl")
    assert len(pre) == len(fc) == 4
    assert all(r["packed"] and r["pairs"] == 8 and r["rows"] < 16 for r in pre)  # 8 pairs + 8 corrupted rows
    assert [r["keys"] for r in pre] == [r["keys"] for r in fc]
    assert pre[0]["loss"] == pytest.approx(2 * math.log(2), abs=1e-5)
    for a, b in zip(pre, fc):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)


# Segment attention (anyalign/attention.py): packed rows under SDPA on the CPU run attention once per group


def _plan_allowed(piece, n):
    """The query-key pairs a group's plan computes, as an ``[n, n]`` boolean matrix over the group."""
    if piece.dense is not None:
        return piece.dense[0, 0] == 0
    allowed = torch.zeros(n, n, dtype=torch.bool)
    a, p = piece.first, piece.prompt
    allowed[:a, :a] = torch.ones(a, a, dtype=torch.bool).tril()  # causal, no mask
    for (start, end), mask in zip(piece.slots, piece.masks):
        assert mask.shape == (1, 1, end - start, p + end - start)
        allowed[start:end, :p] = mask[0, 0, :, :p] == 0
        allowed[start:end, start:end] = mask[0, 0, :, p:] == 0
    return allowed


def test_segments_cut_rows_at_groups_and_slots_as_the_dense_mask_does():
    from anyalign.attention import PAD, attention_segments
    roles, groups = _spans([[[(0, 3), (1, 2), (2, 4)], [(0, 2), (1, 3)]],
                            [[(0, 5), (1, 1), (2, 2), (3, 3)]],
                            [[(0, 4)], [(1, 2), (0, 3)]]])  # no slot; roles out of order: the group's dense mask
    seg = attention_segments(roles, groups)
    assert sum(seg.sizes) == roles.numel() and roles.shape[1] == 14
    assert seg.sizes == [9, 5, 11, 3, 4, 5, 5]  # groups, then each row's padding run
    assert seg.pieces[1].first == 5 and not seg.pieces[1].slots  # one response: plain causal, no mask
    assert [seg.pieces[2].prompt, seg.pieces[2].first, seg.pieces[2].slots] == [5, 6, [(6, 8), (8, 11)]]
    assert seg.pieces[3] == PAD and seg.pieces[6] == PAD
    assert seg.pieces[4].dense is not None and seg.pieces[5].dense is not None
    dense = attention_mask_4d(roles, groups=groups)[:, 0] == 0
    starts = [(0, 0), (0, 9), (1, 0), (2, 0), (2, 4)]
    for (r, s), piece, n in zip(starts, [seg.pieces[i] for i in (0, 1, 2, 4, 5)], [9, 5, 11, 4, 5]):
        assert torch.equal(_plan_allowed(piece, n), dense[r, s:s + n, s:s + n])
        assert not dense[r, s:s + n, :s].any() and not dense[r, s:s + n, s + n:].any()  # nothing outside the group


def _dense(model):
    """The same model forced onto the dense mask (what an LM that drops the keyword gets)."""
    import copy
    dense = copy.deepcopy(model)
    dense._routes_segments = False
    return dense


@pytest.mark.parametrize("layout", ["shared", "concatenated"])
def test_segment_attention_equals_the_dense_mask(text_model, layout, monkeypatch):
    import anyalign.model
    model, exs = text_model, _text_examples(text_model)
    rows = rows_for(exs, layout)
    batch = collate_rows(rows, model.tokenizer.pad_token_id, {}, len(exs), pack=3 * max(group_length(r) for r in rows))
    assert (batch["roles"] < 0).any()  # padding runs too
    dense_lp, _, dense_grad = _forward(_dense(model), batch)
    built = []
    monkeypatch.setattr(anyalign.model, "attention_mask_4d", lambda *a, **k: built.append(1))
    cache = StepCache()
    model.zero_grad()
    out = model(batch, cache)
    seg = cache.masks[("segments", torch.float32, torch.device("cpu"))]
    assert seg.calls == model.lm.config.num_hidden_layers and not built  # every layer, no dense mask
    with torch.no_grad():
        model(batch, cache)  # a second forward on the batch (the reference's) reuses the segments
    assert seg.calls == 2 * model.lm.config.num_hidden_layers and len(cache.masks) == 1
    seg_lp, _, seg_grad = _forward(model, batch)
    for name in dense_lp:
        torch.testing.assert_close(seg_lp[name], dense_lp[name], atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(out.logps[batch["index"][name]].detach(), dense_lp[name], atol=1e-4, rtol=1e-5)
    assert seg_grad.keys() == dense_grad.keys()
    for n, g in seg_grad.items():
        torch.testing.assert_close(g, dense_grad[n], atol=1e-5, rtol=1e-4, msg=n)


def test_unpacked_rows_keep_the_dense_mask(text_model):
    exs = _text_examples(text_model)
    rows = rows_for(exs, "shared")
    for batch in (collate_rows(rows, 0, {}, len(exs)), collate_rows(rows, 0, {}, len(exs), pack=1)):
        cache = StepCache()
        with torch.no_grad():
            text_model(batch, cache)
        assert [k[0] for k in cache.masks] == ["sdpa"]  # the dense (or padding) mask, no segments
    batch = collate_rows(rows, 0, {}, len(exs), pack=200)
    text_model.lm.set_attn_implementation("eager")  # segments are an SDPA path only
    cache = StepCache()
    with torch.no_grad():
        text_model(batch, cache)
    assert [k[0] for k in cache.masks] == ["eager"]


def test_lm_that_drops_the_keyword_falls_back_to_the_dense_mask(text_model, caplog):
    model, exs = text_model, _text_examples(text_model)
    rows = rows_for(exs, "shared")
    batch = collate_rows(rows, 0, {}, len(exs), pack=200)
    with torch.no_grad():
        expected = _dense(model)(batch).logps
    decoder = model.lm.get_decoder()
    forward = decoder.forward
    decoder.forward = lambda *a, **k: forward(*a, **{x: v for x, v in k.items() if x != "anyalign_segments"})
    cache = StepCache()
    with caplog.at_level(logging.INFO, logger="anyalign"), torch.no_grad():
        got = model(batch, cache).logps
    assert "packed rows take the dense mask" in caplog.text and model._routes_segments is False
    assert ("sdpa", torch.float32, torch.device("cpu")) in cache.masks
    torch.testing.assert_close(got, expected)


def test_sdpa_registry_entry_is_transformers_own_without_segments():
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from anyalign.attention import segment_sdpa
    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is segment_sdpa
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = 2, True
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 7, 8, generator=g)
    k, v = torch.randn(2, 2, 7, 8, generator=g), torch.randn(2, 2, 7, 8, generator=g)
    mask = torch.zeros(2, 1, 7, 7).masked_fill_(torch.rand(2, 1, 7, 7, generator=g) < 0.3, -1e30)
    mask[..., torch.arange(7), torch.arange(7)] = 0
    for m in (None, mask):
        assert torch.equal(segment_sdpa(module, q, k, v, m, scaling=0.3)[0],
                           segment_sdpa.original(module, q, k, v, m, scaling=0.3)[0])


def test_segment_attention_under_activation_checkpointing(tiny_lm):
    """Recomputed layers get the same segments (the keyword rides along into the recomputation)."""
    torch.manual_seed(0)
    model = MultimodalLM(tiny_lm, {}, gradient_checkpointing=True)  # train mode: checkpointing is active
    assert model.lm.get_decoder().gradient_checkpointing and model.training
    exs = _text_examples(model)
    batch = collate_rows(rows_for(exs, "shared"), 0, {}, len(exs), pack=200)
    dense_lp, _, dense_grad = _forward(_dense(model), batch)
    cache = StepCache()
    model(batch, cache).logps.sum().backward()
    assert next(iter(cache.masks.values())).calls == 2 * model.lm.config.num_hidden_layers  # forward, recomputed
    seg_lp, _, seg_grad = _forward(model, batch)
    for name in dense_lp:
        torch.testing.assert_close(seg_lp[name], dense_lp[name], atol=1e-4, rtol=1e-5)
    for n, g in seg_grad.items():
        torch.testing.assert_close(g, dense_grad[n], atol=1e-5, rtol=1e-4, msg=n)


def test_segment_attention_refuses_softcap_and_position_bias():
    from anyalign.attention import attention_segments, segment_sdpa
    roles, groups = _spans([[[(0, 2), (1, 2)], [(0, 1), (1, 1)]]])
    seg = attention_segments(roles, groups)
    module = torch.nn.Module()
    q = torch.randn(1, 2, 6, 4)
    for extra in ({"softcap": 30.0}, {"position_bias": torch.zeros(1, 2, 6, 6)}):
        with pytest.raises(ValueError, match="data.packing: false"):
            segment_sdpa(module, q, q, q, None, anyalign_segments=seg, **extra)
