"""Online and mixed DPO (``anyalign/online``, ``data.online_fraction``): the rewards' values, the K samples coming
from the policy as it is at the step (media encoded once for the K), the reward seeing every sample, a raising reward
skipping its sample only, the share of online samples, and fits that train on what the policy wrote."""
from __future__ import annotations

import csv

import pytest
import torch

import online_rewards
from anyalign.__main__ import main
from anyalign.data.pipeline import Skipped, route_online
from anyalign.data.template import PreferenceTokenizer
from anyalign.generation import generate_batch
from anyalign.online import ExactMatch, Judge, OnlineSampler, RewardModel, TokenF1, build_reward, token_f1
from conftest import ROOT, jpeg_bytes, write_shard

MESSAGES = [{"role": "user", "content": "<image>\nWhat is this?"}]
SAMPLE = {"key": "k", "url": "u", "messages": MESSAGES, "prompt": MESSAGES[0]["content"], "answer": "a motorcycle"}


# ---- rewards ----

def test_rule_based_rewards_by_hand():
    responses = ["This is a motorcycle.", "A Motorcycle!", "a cat"]
    assert ExactMatch()(SAMPLE, responses) == [0.0, 1.0, 0.0]
    assert ExactMatch(contains=True)(SAMPLE, responses) == [1.0, 1.0, 0.0]
    # answer words [motorcycle]; "This is a motorcycle." -> [this, is, motorcycle]: precision 1/3, recall 1
    assert TokenF1()(SAMPLE, responses) == pytest.approx([0.5, 1.0, 0.0])
    # [galaxies, in, deep, space] vs [it, shows, galaxies, in, space]: 3 in common, precision 3/5, recall 3/4
    assert token_f1("galaxies in deep space", "It shows galaxies in space.") == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    with pytest.raises(ValueError, match="no 'answer'"):
        TokenF1()({**SAMPLE, "answer": None}, responses)


def test_build_reward_names_the_key():
    assert isinstance(build_reward({"class_path": "anyalign.online.TokenF1"}), TokenF1)
    assert isinstance(build_reward({"class_path": "ExactMatch", "init_args": {"contains": True}}), ExactMatch)
    with pytest.raises(ValueError, match=r"model.online.reward.class_path 'nope.Reward' cannot be imported"):
        build_reward({"class_path": "nope.Reward"})
    with pytest.raises(ValueError, match=r"model.online.reward.init_args: .*unexpected keyword argument 'contain'"):
        build_reward({"class_path": "ExactMatch", "init_args": {"contain": True}})
    with pytest.raises(ValueError, match=r"model.online has unknown key\(s\) \['sample'\]"):
        OnlineSampler({"sample": 4, "reward": {"class_path": "TokenF1"}})
    with pytest.raises(ValueError, match="model.online.temperature must be > 0"):
        OnlineSampler({"reward": {"class_path": "TokenF1"}, "temperature": 0})
    with pytest.raises(ValueError, match="model.online needs a reward"):
        OnlineSampler({"samples": 4})


def test_reward_model_scores_each_response_as_its_own_forward(tiny_lm, tmp_path):
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tiny_lm)
    model = AutoModelForSequenceClassification.from_config(
        AutoConfig.from_pretrained(tiny_lm, num_labels=1, pad_token_id=tok.pad_token_id))
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    reward = RewardModel(str(tmp_path), batch_size=2)
    reward.bind(None)
    responses = ["A cat.", "A dog sitting on a red mat.", "Two cups of coffee."]  # padded to one batch of two
    scores = reward(SAMPLE, responses)
    assert len(scores) == 3 and len(set(scores)) == 3
    for text, score in zip(responses, scores):
        enc = tok(reward.text(SAMPLE, text), return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            assert model(**enc).logits[0, 0].item() == pytest.approx(score, abs=1e-4)
    assert "A cat." in reward.text(SAMPLE, "A cat.") and "What is this?" in reward.text(SAMPLE, "A cat.")


def test_judge_is_order_fair_and_reads_both_responses(tiny_lm):
    judge = Judge(tiny_lm)
    judge.bind(None)
    responses = ["A motorcycle.", "A cat on a mat.", "Coins."]
    rewards = judge(SAMPLE, responses)
    assert all(0 <= r <= 1 for r in rewards)
    assert sum(rewards) / 3 == pytest.approx(0.5)  # each pair judged both ways: P(i beats j) + P(j beats i) = 1
    p_ab, p_ba = judge.prefer_first(SAMPLE, [(responses[0], responses[1]), (responses[1], responses[0])])
    p_ac, p_ca = judge.prefer_first(SAMPLE, [(responses[0], responses[2]), (responses[2], responses[0])])
    expected = ((p_ab + 1 - p_ba) / 2 + (p_ac + 1 - p_ca) / 2) / 2
    assert rewards[0] == pytest.approx(expected, abs=1e-6)
    assert abs(p_ab - 0.5) > 1e-4  # the verdict depends on the responses (a random tiny judge still prefers)


# ---- the sampler ----

def _online_examples(model, n=3):
    tok = PreferenceTokenizer(model.tokenizer, model.media_token_ids, 256)
    adapter, out = model.adapters["image"], []
    for i in range(n):
        image = adapter.preprocess(adapter.decode(jpeg_bytes(i), "jpg"))
        ids = tok(MESSAGES, {}, {"image": [adapter.num_tokens(image)]})
        out.append({"key": f"s{i}", "url": "u", "messages": MESSAGES, "answer": "a cat", "prompt": ids["prompt"],
                    "media": {"image": [image]}, "responses": {}, "online": True})
    return out


def _count_encoded(model):
    seen = []
    adapter = model.adapters["image"]
    forward = adapter.forward

    def counting(items, *args, **kwargs):
        seen.append(len(items))
        return forward(items, *args, **kwargs)
    adapter.forward = counting
    return seen


def test_k_samples_are_the_policys_own_and_media_are_encoded_once(image_model):
    model = image_model
    examples = _online_examples(model)
    sampler = OnlineSampler({"samples": 3, "reward": {"class_path": "TokenF1"}, "max_new_tokens": 6, "seed": 1})
    seen = _count_encoded(model)
    texts, counts, _ = sampler.sample(model, examples, step=5, rank=0)
    assert seen == [3] and [len(t) for t in texts] == [3, 3, 3]  # 3 images encoded once for their 3 x 3 answers
    # the same draws from the same policy with each prompt repeated K times (its image encoded K times)
    repeated = [{"ids": ex["prompt"], "media": ex["media"]} for ex in examples for _ in range(3)]
    tokens = generate_batch(model, repeated, sampler.generation, rng=sampler.rng(torch.device("cpu"), 5, 0))
    assert seen[-1] == 9
    assert [t for per in texts for t in per] == [model.tokenizer.decode(t, skip_special_tokens=True) for t in tokens]
    assert [n for per in counts for n in per] == [len(t) for t in tokens]
    assert len({t for per in texts for t in per}) > 3  # sampling: the K answers differ
    # another step or rank draws others; a changed policy answers otherwise with the same draws
    assert sampler.sample(model, examples, step=6, rank=0)[0] != texts
    assert sampler.sample(model, examples, step=5, rank=1)[0] != texts
    assert sampler.sample(model, examples, step=5, rank=0)[0] == texts
    with torch.no_grad():
        model.lm.get_output_embeddings().weight.add_(torch.randn_like(model.lm.get_output_embeddings().weight))
    assert sampler.sample(model, examples, step=5, rank=0)[0] != texts
    assert model.training  # generation ran in eval mode and gave the mode back


class Fixed:
    """Rewards by key; raises for s1."""
    scores = {"s0": [1.0, 0.0, 0.5], "s2": [0.3, 0.3, 0.3]}

    def __call__(self, sample, responses):
        if sample["key"] == "s1":
            raise KeyError("no score for s1")
        self.seen = getattr(self, "seen", []) + [(sample["key"], list(responses), sample["answer"])]
        return self.scores[sample["key"]]


def test_rewards_rank_the_k_responses_and_a_failing_reward_skips_its_sample(image_model):
    model = image_model
    examples = _online_examples(model) + [{"key": "offline", "responses": {"chosen": [1], "rejected": [2]}}]
    sampler = OnlineSampler({"samples": 3, "reward": {"class_path": "TokenF1"}, "max_new_tokens": 6})
    sampler.reward = Fixed()
    tok = PreferenceTokenizer(model.tokenizer, model.media_token_ids, 256)
    out, skipped, stats = sampler(model, examples, tok, step=0)
    assert [ex["key"] for ex in out] == ["offline", "s0"]  # s1 skipped, s2 tied (nothing to prefer)
    assert skipped == [("u", "s1", "online reward Fixed: KeyError: 'no score for s1'")]
    assert (stats.prompts, stats.tied, stats.rewards) == (3, 1, [[1.0, 0.0, 0.5], [0.3, 0.3, 0.3]])
    s0 = out[1]
    assert s0["ranks"] == [0, 2, 1]
    # the reward saw each of the K sampled texts, with the sample's answer; the row scores exactly those texts
    (key, texts, answer), _ = sampler.reward.seen
    assert (key, answer, len(texts)) == ("s0", "a cat", 3)
    size = model.adapters["image"].num_tokens(examples[0]["media"]["image"][0])
    for k, text in enumerate(texts):
        offline = tok(MESSAGES, {"r": text}, {"image": [size]})["responses"]["r"]
        assert s0["responses"][f"response_{k}"] == offline
    assert s0["prompt"] == examples[0]["prompt"] and s0["media"] is examples[0]["media"]


def test_route_online_marks_the_share_evenly():
    pairs = [{"key": str(i), "responses": {"chosen": "a", "rejected": "b"}, "messages": [], "answer": "x"}
             for i in range(8)]
    half = list(route_online(iter(pairs), 0.5))
    assert [bool(ex.get("online")) for ex in half] == [False, True] * 4
    assert all(ex["responses"] == {} for ex in half if ex.get("online")) and half[0]["responses"] == pairs[0]["responses"]
    assert [i for i, ex in enumerate(route_online(iter(pairs), 0.25)) if ex.get("online")] == [3, 7]
    assert all(ex.get("online") for ex in route_online(iter(pairs), 1.0))
    mixed = [Skipped("u", "bad", "x"), {"key": "p", "responses": {}}, *pairs[:3]]
    out = list(route_online(iter(mixed), 0.5))
    assert out[0] == mixed[0] and out[1]["online"] and [bool(x.get("online")) for x in out[2:]] == [False, False, True]


# ---- configs, data and fits ----

def _fit(config, tmp_path, *extra):
    main(["fit", "--config", str(ROOT / config), "--trainer.max_steps", "4", "--trainer.val_check_interval", "4",
          "--trainer.limit_val_batches", "1", "--trainer.num_sanity_val_steps", "0", "--trainer.log_every_n_steps", "1",
          "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path),
          "--data.num_workers", "0", *extra])
    (run,) = tmp_path.glob("lightning_logs/version_*")
    return run, list(csv.DictReader((run / "metrics.csv").open()))


def test_online_fit_samples_from_the_policy_being_trained(tmp_path, monkeypatch, capsys):
    """Every online prompt's K samples reach the reward from the policy as it is at that step (its weights change
    between steps), a raising reward skips only its sample, and the run writes its reward curve."""
    monkeypatch.chdir(ROOT)
    online_rewards.CALLS.clear()
    run, rows = _fit("configs/image_mixed_dpo.yaml", tmp_path, "--data.online_fraction", "1.0",
                     "--data.batch_size", "4", "--data.shuffle_buffer", "1", "--data.train_shards",
                     "assets/data/image/train-000.tar", "--model.lr", "1e-2",
                     "--model.online", '{"samples": 2, "max_new_tokens": 8, "reward": {"class_path": '
                     '"online_rewards.Recorder", "init_args": {"fail_key": "img-train-000001"}}}')
    calls = online_rewards.CALLS
    assert len(calls) == 4 * 4 - 1  # 4 steps of 4 prompts, one skipped by its reward
    assert all(len(c["responses"]) == 2 and c["answer"] and "<image>" in c["prompt"] for c in calls)
    prints = [c["fingerprint"] for c in calls[::4]]  # the first call of each step (the skipped key is the 2nd)
    assert len(set(prints)) == 4  # a different policy at every step: the one being trained
    assert len({c["fingerprint"] for c in calls[:3]}) == 1  # one policy for all of a step's prompts
    out = capsys.readouterr().out
    assert "bad samples skipped: 1" in out and "img-train-000001: online reward Recorder: RuntimeError: cannot score" in out
    assert "[anyalign] online: 15 prompts scored" in out
    rewards = [float(r["online/reward"]) for r in rows if r.get("online/reward")]
    assert len(rewards) == 4
    assert (run / "online_rewards.png").stat().st_size > 10_000


def test_mixed_fit_trains_offline_pairs_and_online_samples_together(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    online_rewards.CALLS.clear()
    _, rows = _fit("configs/image_mixed_dpo.yaml", tmp_path, "--model.online",
                   '{"samples": 2, "max_new_tokens": 6, "reward": {"class_path": "online_rewards.Recorder"}}')
    prompts = [float(r["online/prompts"]) for r in rows if r.get("online/prompts")]
    assert prompts == [4.0] * 4  # online_fraction 0.5 of batches of 8
    assert len(online_rewards.CALLS) == 16
    # the offline half trained too: the pair rewards of the step are logged from the shipped pairs
    assert sum(1 for r in rows if r.get("rewards/accuracies")) == 4


def test_online_settings_fail_at_start_naming_the_key(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(ValueError, match=r"data.online_fraction=0.5 needs model.online"):
        _fit("configs/image_dpo.yaml", tmp_path, "--data.online_fraction", "0.5")
    with pytest.raises(ValueError, match=r"data.online_fraction must be a number in \[0, 1\], got 1.5"):
        _fit("configs/image_dpo.yaml", tmp_path, "--data.online_fraction", "1.5")
    with pytest.raises(ValueError, match=r"model.reference=precomputed cannot score responses sampled"):
        _fit("configs/image_mixed_dpo.yaml", tmp_path, "--model.reference", "precomputed",
             "--model.reference_cache", str(tmp_path))


def test_prompt_only_samples_train_online_and_are_bad_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    shard = write_shard(tmp_path / "prompts.tar", [
        {"__key__": f"p{i}", "json": {"prompt": "<image>\nWhat is this?", "answer": "a cat"}, "jpg": jpeg_bytes(i)}
        for i in range(4)])
    online_rewards.CALLS.clear()
    _fit("configs/image_mixed_dpo.yaml", tmp_path / "online", "--data.train_shards", shard, "--data.batch_size", "4",
         "--model.online", '{"samples": 2, "max_new_tokens": 4, "reward": {"class_path": "online_rewards.Recorder"}}')
    assert {c["key"] for c in online_rewards.CALLS} == {f"p{i}" for i in range(4)}
    assert "bad samples skipped: 0" in capsys.readouterr().out
    _fit("configs/image_dpo.yaml", tmp_path / "offline", "--data.train_shards", shard, "--data.batch_size", "4",
         "--trainer.max_steps", "1")
    assert "json has no 'chosen' or 'rejected'" in capsys.readouterr().out


def test_online_dpo_raises_the_reward_it_is_given(tmp_path, monkeypatch):
    """The tiny LM learns what the reward asks for within a short run: here, shorter answers (the reward is minus
    the length in characters), from DPO on its own best vs worst of 4 samples per prompt."""
    monkeypatch.chdir(ROOT)
    online_rewards.CALLS.clear()
    _, rows = _fit("configs/image_mixed_dpo.yaml", tmp_path, "--data.online_fraction", "1.0", "--model.lr", "1e-2",
                   "--trainer.max_steps", "32", "--trainer.val_check_interval", "32", "--data.batch_size", "4",
                   "--model.online", '{"samples": 4, "max_new_tokens": 12, "reward": {"class_path": '
                   '"online_rewards.Recorder"}}')
    rewards = [float(r["online/reward"]) for r in rows if r.get("online/reward")]
    assert len(rewards) == 32
    first, last = sum(rewards[:8]) / 8, sum(rewards[-8:]) / 8
    print(f"mean reward of the samples: {first:.2f} over the first 8 steps, {last:.2f} over the last 8")
    assert last > first + 4, (first, last)  # characters: the sampled answers got shorter


def test_fit_starts_from_an_export_with_its_trained_adapters(image_model, tmp_path, caplog):
    """``model.lm`` an anyalign export (an SFT run's, for online DPO): its LM and its trained adapters, whether
    ``model.adapters`` is left out or names the same ones; other adapters are refused naming the key."""
    from safetensors.torch import load_file

    from anyalign.export import save_aligned
    from anyalign.module import AlignModule
    from modalities import ImageAdapter, VideoAdapter
    with torch.no_grad():
        for p in image_model.adapters["image"].projector.parameters():
            p.add_(1.0)  # "trained": not what a fresh adapter starts from
    export = save_aligned(image_model, tmp_path / "sft")
    stored = load_file(str(export / "adapters" / "image" / "adapter.safetensors"))
    for adapters in (None, {"image": ImageAdapter(encoder=str(ROOT / "assets" / "tiny-siglip"), spatial_pool=2)}):
        module = AlignModule(lm=str(export), adapters=adapters)
        state = module.policy.adapters["image"].state_dict()
        assert all(torch.equal(state[k], v) for k, v in stored.items())
        lm, ref = module.policy.lm.state_dict(), image_model.lm.state_dict()
        assert all(torch.equal(lm[k], ref[k]) for k in ref)
    assert "model.adapters.image: spatial_pool differ from the export" in caplog.text
    with pytest.raises(ValueError, match=r"model.lm .* is an anyalign export with adapters \['image'\], but "
                                         r"model.adapters names \['video'\]"):
        AlignModule(lm=str(export), adapters={"video": VideoAdapter(encoder=str(ROOT / "assets" / "tiny-siglip"))})


def test_a_pretrained_family_samples_online(tiny_family):
    """A pretrained family's policy (its own processor and generate): K answers per prompt from the family model,
    tokenized by its own chat template into a ranked K-response example."""
    from test_family_generation import first_sample
    from test_families import policy
    from anyalign.generation import prepare
    model = policy(tiny_family, "qwen2_vl").train()
    ready = prepare(model, first_sample(model, "image"))
    example = {"key": "f0", "url": "u", "messages": ready["messages"], "answer": "a cat", "prompt": ready["ids"],
               "media": ready["media"], "responses": {}, "online": True}
    sampler = OnlineSampler({"samples": 3, "reward": {"class_path": "TokenF1"}, "max_new_tokens": 5})
    sampler.reward = lambda sample, responses: [float(len(r)) for r in responses]
    texts, _, _ = sampler.sample(model, [example], step=0)
    assert len(texts[0]) == 3 and len(set(texts[0])) > 1 and model.training
    out, skipped, stats = sampler(model, [example], model.preference_tokenizer(512), step=0)
    assert not skipped and (stats.prompts, stats.tied) == (1, 0)
    (row,) = out
    tok = model.preference_tokenizer(512)
    assert [row["responses"][f"response_{k}"] for k in range(3)] == [
        tok.response_ids(ready["messages"], tok.render(ready["messages"]), t) for t in texts[0]]


def test_a_reward_model_that_cannot_load_fails_naming_the_key(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(ValueError, match=r"model.online.reward \(RewardModel\) cannot load its model: .*no-such-rm"):
        _fit("configs/image_mixed_dpo.yaml", tmp_path, "--model.online",
             f'{{"reward": {{"class_path": "RewardModel", "init_args": {{"model": "{tmp_path}/no-such-rm"}}}}}}')
