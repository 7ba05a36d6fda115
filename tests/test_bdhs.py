"""BDHS (``anyalign/bdhs.py``): blocking attention to the media tokens removes their influence (all blocked: swapping
the media changes nothing; none blocked: it does) without shifting positions; the chosen prefix is kept; candidates
too similar to the chosen response are resampled; the written shards copy every other member byte for byte and
train."""
import json

import pytest
import torch

from anyalign import generation
from anyalign.bdhs import (DEFAULTS, TokenOverlap, chosen_prefix, choose_blocked, load_settings, media_positions,
                           read_tar, run, sample_rejected, sentences, split_point, swap_yes_no, write_tar)
from anyalign.cli import main
from anyalign.data.pipeline import decode, read_shards
from anyalign.generation import GenerationConfig, generate_batch, prepare
from anyalign.model import MultimodalLM
from modalities import VideoAdapter

from conftest import ASSETS, ROOT

VAL = str(ASSETS / "data" / "video" / "val-000.tar")


@pytest.fixture(scope="module")
def model(tiny_lm, tiny_vit):
    torch.manual_seed(0)
    m = MultimodalLM(tiny_lm, {"video": VideoAdapter(encoder=tiny_vit, num_frames=8, spatial_pool=2)})
    return m.eval()


def _prepared(model, n=4):
    exs = decode(read_shards(iter([VAL])), dict(model.adapters.items()))
    return [prepare(model, {"messages": e["messages"], "media": e["media"]}) for _, e in zip(range(n), exs)]


def _logits(model, prepared, blocked, monkeypatch, use_cache=True, steps=3):
    """The logits of every generation step (greedy), and the generated ids."""
    seen = []
    pick = generation._pick

    def spy(logits, cfg, rng):
        seen.append(logits.detach().clone())
        return pick(logits, cfg, rng)
    monkeypatch.setattr(generation, "_pick", spy)
    ids = generate_batch(model, prepared, GenerationConfig(max_new_tokens=steps), use_cache, blocked=blocked)
    monkeypatch.setattr(generation, "_pick", pick)
    return torch.stack(seen), ids


def test_blocking_all_media_tokens_removes_their_influence(model, monkeypatch):
    own = _prepared(model)
    swapped = [{**p, "media": own[(i + 1) % len(own)]["media"]} for i, p in enumerate(own)]
    every = [media_positions(model, p["ids"]) for p in own]
    assert all(len(w) == 32 for w in every)  # 8 frames x 4 tokens per clip
    none = [[] for _ in own]

    base, base_ids = _logits(model, own, None, monkeypatch)
    off, off_ids = _logits(model, own, none, monkeypatch)
    assert torch.equal(base, off) and base_ids == off_ids  # nothing blocked: bit-identical to no argument
    other, _ = _logits(model, swapped, none, monkeypatch)
    assert not torch.allclose(base, other, atol=1e-4)  # the media matter when nothing is blocked

    blind, blind_ids = _logits(model, own, every, monkeypatch)
    blind_other, other_ids = _logits(model, swapped, every, monkeypatch)
    torch.testing.assert_close(blind, blind_other, atol=1e-5, rtol=1e-5)  # all blocked: the media cannot matter
    assert blind_ids == other_ids
    assert not torch.allclose(blind, base, atol=1e-4)
    uncached, _ = _logits(model, own, every, monkeypatch, use_cache=False)
    torch.testing.assert_close(uncached, blind, atol=1e-5, rtol=1e-5)  # cached path = recomputation


def test_blocking_keeps_positions_and_zeroes_only_the_blocked_keys(model):
    prepared = _prepared(model, 3)
    prepared[1] = {**prepared[1], "ids": prepared[1]["ids"][2:]}  # unequal lengths: left padding in play
    calls = []
    hook = model.lm.register_forward_pre_hook(lambda m, a, kw: calls.append(
        (kw["position_ids"].clone(), kw["attention_mask"].clone())), with_kwargs=True)
    try:
        generate_batch(model, prepared, GenerationConfig(max_new_tokens=1), use_cache=False, blocked=None)
        blocked = [choose_blocked(media_positions(model, p["ids"]), 0.5, torch.Generator().manual_seed(i))
                   for i, p in enumerate(prepared)]
        generate_batch(model, prepared, GenerationConfig(max_new_tokens=1), use_cache=False, blocked=blocked)
    finally:
        hook.remove()
    (pos0, mask0), (pos1, mask1) = calls
    assert torch.equal(pos0, pos1)  # positions from the padding mask only
    length = mask0.shape[1]
    for i, (p, where) in enumerate(zip(prepared, blocked)):
        assert 0 < len(where) < 32 and set(where) <= set(media_positions(model, p["ids"]))
        cols = [length - len(p["ids"]) + w for w in where]
        assert mask1[i, cols].eq(0).all() and mask0[i, cols].eq(1).all()
        mask1[i, cols] = 1
    assert torch.equal(mask0, mask1)  # nothing else changed
    with pytest.raises(IndexError):
        generate_batch(model, prepared[:1], GenerationConfig(max_new_tokens=1), blocked=[[10 ** 6]])


def test_prefix_is_kept(model):
    assert chosen_prefix("The video shows a tray of coins.", 0.5) == "The video shows"
    assert chosen_prefix("I  see a cat.", 0.5) == "I  see"
    assert chosen_prefix("A cat.", 0.0) == "" and chosen_prefix("A cat.", 1.0) == "A cat."
    items = [{"prepared": p, "chosen": c} for p, c in zip(_prepared(model, 3), ["The video shows a tray of coins.",
                                                                           "I see a rocket on a launch pad.", "Cat."])]
    settings = {"max_new_tokens": 4, "temperature": 1.0, "top_p": 0.9, "seed": 0, "prefix_fraction": 0.5,
                "mask_fraction": 0.9, "threshold": 0.9, "max_tries": 2}
    out = sample_rejected(model, items, settings, TokenOverlap(), torch.Generator().manual_seed(0),
                          torch.Generator().manual_seed(0))
    assert out[0].prefix == "The video shows" and out[0].rejected.startswith("The video shows")
    assert out[1].prefix == "I see a rocket" and out[1].rejected.startswith("I see a rocket")
    assert out[2].prefix == ""


def test_blocked_share_follows_the_paper():
    """Each media token blocked on its own with probability mask_fraction (eq. 6 with rho_th = mask_fraction)."""
    pos = list(range(20000))
    assert choose_blocked(pos, 1.0, torch.Generator().manual_seed(0)) == pos
    assert choose_blocked(pos, 0.0, torch.Generator().manual_seed(0)) == []
    share = len(choose_blocked(pos, 0.99, torch.Generator().manual_seed(0))) / len(pos)
    assert 0.985 < share < 0.995
    a, b = (choose_blocked(pos, 0.5, torch.Generator().manual_seed(s)) for s in (0, 1))
    assert a != b and a == choose_blocked(pos, 0.5, torch.Generator().manual_seed(0))


def test_sentences_split_points_and_yes_no():
    text = "The video shows a cat. It is black!  Yes"
    assert [text[s:e] for s, e in sentences(text)] == ["The video shows a cat.", "It is black!", "Yes"]
    gen = torch.Generator().manual_seed(0)
    heads = {split_point("a b c d", "random", gen) for _ in range(200)}
    assert heads == {"", "a", "a b", "a b c"}  # never the whole sentence: at least its last word is generated
    assert swap_yes_no(" yes, it is.", 1.0, gen) == " no, it is." and swap_yes_no("No.", 1.0, gen) == "Yes."
    assert swap_yes_no("Yesterday.", 1.0, gen) == "Yesterday." and swap_yes_no("No.", 0.0, gen) == "No."
    swapped = sum(swap_yes_no("Yes.", 0.5, gen) == "No." for _ in range(400))
    assert 150 < swapped < 250


def test_each_sentence_is_continued_after_the_chosen_ones(model):
    """Sentence mode: every sentence keeps its own head, the chosen text before it is context only."""
    chosen = "The video shows a tray of coins. It is a tray."
    items = [{"prepared": p, "chosen": chosen} for p in _prepared(model, 2)]
    settings = {"max_new_tokens": 4, "temperature": 1.0, "top_p": 0.9, "seed": 0, "prefix_fraction": 0.5,
                "mask_fraction": 0.99, "threshold": 2.0, "max_tries": 1}
    for o in sample_rejected(model, items, settings, TokenOverlap(), torch.Generator().manual_seed(0),
                             torch.Generator().manual_seed(0)):
        assert o.prefix == "The video shows | It is"
        assert o.rejected.startswith("The video shows") and " It is" in o.rejected[len("The video shows"):]


class Scripted:
    """A similarity test that answers from a script: per call, per candidate (1.0 = too similar)."""
    script: list = []
    calls: list = []

    def bind(self, model):
        pass

    def __call__(self, refs, cands):
        Scripted.calls.append(len(cands))
        return Scripted.script.pop(0) if Scripted.script else [0.0] * len(cands)


def _small_shard(tmp_path, n=4):
    samples = [s for _, s in zip(range(n), read_tar(VAL))]  # (key, members)
    path = tmp_path / "in-000.tar"
    write_tar(path, [m for _, m in samples])
    return path, samples


def _settings(tmp_path, src, **kw):
    return {"model": None, "model_config": None, "ckpt_path": None, "input": [str(src)], "output": str(tmp_path / "out"),
            "mask_fraction": 0.9, "prefix_fraction": 0.5, "threshold": 0.9, "max_tries": 3, "temperature": 1.0,
            "top_p": 0.9, "max_new_tokens": 4, "batch_size": 4, "seed": 0,
            "similarity": {"class_path": "test_bdhs.Scripted"}, "exhausted": "drop", **kw}


def test_too_similar_candidates_are_resampled(model, tmp_path):
    src, _ = _small_shard(tmp_path)
    # try 1: samples 0 and 2 too similar; try 2 (samples 0, 2): 0 still; try 3 (sample 0): still -> exhausted
    Scripted.script, Scripted.calls = [[1.0, 0.1, 0.95, 0.2], [0.97, 0.3], [0.99]], []
    summary = run(_settings(tmp_path, src), model=model, log=lambda s: None)
    assert Scripted.calls == [4, 2, 1]  # only the too-similar ones are generated again
    per = list(summary["per_sample"].values())
    assert [p["tries"] for p in per] == [3, 1, 2, 1]
    assert [p["accepted"] for p in per] == [False, True, True, True]
    assert per[0]["similarity"] == 0.97  # exhausted: the least similar candidate is kept
    assert summary["tries"] == {"1": 2, "2": 1} and summary["exhausted"] == 1
    written = [k for k, _ in read_tar(str(tmp_path / "out" / "in-000.tar"))]
    assert written == [p.split("/")[-1] for p in summary["per_sample"]][1:]  # the exhausted one left out

    Scripted.script = [[1.0, 0.1, 0.95, 0.2], [0.97, 0.3], [0.99]]
    summary = run(_settings(tmp_path, src, exhausted="keep"), model=model, log=lambda s: None)
    assert len(list(read_tar(str(tmp_path / "out" / "in-000.tar")))) == 4  # kept with its least similar candidate


def test_last_try_is_unguided_and_kept(model, tmp_path):
    """exhausted: unguided (the default, the paper's Algorithm 1): after max_tries - 1 guided tries, a whole
    response without the chosen text, kept whatever its similarity."""
    src, _ = _small_shard(tmp_path)
    Scripted.script, Scripted.calls = [[1.0, 0.1, 1.0, 1.0], [1.0, 1.0, 0.2], [1.0, 1.0]], []
    summary = run(_settings(tmp_path, src, exhausted="unguided"), model=model, log=lambda s: None)
    assert Scripted.calls == [4, 3, 2]
    per = list(summary["per_sample"].values())
    assert [p["tries"] for p in per] == [3, 1, 3, 2]
    assert [p["guided"] for p in per] == [False, True, False, True] and all(p["accepted"] for p in per)
    assert summary["tries"] == {"1": 1, "2": 1} and summary["exhausted"] == 2
    assert len(list(read_tar(str(tmp_path / "out" / "in-000.tar")))) == 4
    assert DEFAULTS["exhausted"] == "unguided"


def test_written_shards_copy_members_and_train(model, tmp_path, monkeypatch):
    src, samples = _small_shard(tmp_path, 8)
    Scripted.script = []
    run(_settings(tmp_path, src), model=model, log=lambda s: None)
    out = list(read_tar(str(tmp_path / "out" / "in-000.tar")))
    assert [k for k, _ in out] == [k for k, _ in samples]
    for (_, new), (_, old) in zip(out, samples):
        assert [n for n, _ in new] == [n for n, _ in old]
        for (name, a), (_, b) in zip(new, old):
            if name.endswith(".json"):
                ra, rb = json.loads(a), json.loads(b)
                assert ra.pop("rejected") != rb.pop("rejected") and ra == rb  # only rejected changed
            else:
                assert a == b  # media byte for byte
    assert json.loads((tmp_path / "out" / "bdhs.json").read_text())["samples"] == 8

    monkeypatch.chdir(ROOT)
    main(["fit", "--config", "configs/video_dpo.yaml", "--data.train_shards", str(tmp_path / "out" / "in-000.tar"),
          "--data.val_shards", str(tmp_path / "out" / "in-000.tar"), "--trainer.max_steps", "2",
          "--trainer.val_check_interval", "2", "--trainer.num_sanity_val_steps", "0", "--trainer.logger", "false",
          "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
          "--trainer.callbacks", "[]", "--trainer.default_root_dir", str(tmp_path / "run"),
          "--data.num_workers", "0", "--data.batch_size", "4", "--model.export_dir", "null"])


def test_tool_config_runs(tmp_path, monkeypatch):
    """The shipped tool config end to end (``python -m anyalign bdhs --config ...``), on 4 demo samples."""
    src, _ = _small_shard(tmp_path)
    monkeypatch.chdir(tmp_path)
    main(["bdhs", "--config", str(ROOT / "configs" / "tools" / "video_bdhs.yaml"), "--input", str(src),
          "--output", str(tmp_path / "o"), "--max_new_tokens", "4", "--max_tries", "2"])
    summary = json.loads((tmp_path / "o" / "bdhs.json").read_text())
    assert summary["samples"] == 4 and summary["settings"]["mask_fraction"] == 0.99
    assert len(list(read_tar(str(tmp_path / "o" / "in-000.tar")))) == 4  # unguided: nothing left out


def test_config_and_command_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = load_settings(["--config", str(ROOT / "configs" / "tools" / "video_bdhs.yaml"), "--max_tries", "2",
                       "--output", "x"])
    assert s["model_config"] == str(ROOT / "configs" / "video_dpo.yaml")  # next to the config
    assert s["input"] == [str(ROOT / "assets/data/video/train-{000..003}.tar")]  # found from the project root
    assert s["max_tries"] == 2 and s["output"] == "x" and s["mask_fraction"] == 0.99
    assert s["prefix_fraction"] == "random" and s["sentences"] is True and s["threshold"] == 0.97
    assert load_settings(["--config", str(ROOT / "configs" / "tools" / "video_bdhs.yaml"), "--prefix_fraction",
                          "0.5", "--sentences", "false"])["prefix_fraction"] == 0.5
    from anyalign.commands import ConfigError
    with pytest.raises(ConfigError, match="prefix_fraction"):
        load_settings(["--config", str(ROOT / "configs" / "tools" / "video_bdhs.yaml"), "--prefix_fraction", "2"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("mask_fractoin: 0.5\n")
    with pytest.raises(ConfigError, match="unknown key"):
        load_settings(["--config", str(bad)])
