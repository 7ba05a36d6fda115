"""Online DPO's sampling step: K responses per prompt from the current policy, scored by a reward, as one
K-response example per prompt (ranked by the reward) for the usual collator and loss terms.

Runs inside ``training_step`` (``AlignModule``), on the batch's online examples (``data.online_fraction``):

1. generation from the policy as it is at this step (eval mode, no gradient): the prompts and their media are
   embedded once and repeated K times (``generate_batch(num_samples=K)``), one KV cache for the B x K rows;
   sampling is seeded by (``seed``, global step, rank), so each rank draws its own and a resumed run draws the
   same as the run it continues;
2. the reward, once per prompt with its K decoded responses; a reward that raises, or returns other than K
   finite numbers, skips that prompt with the reason;
3. each response is tokenized from its text as an offline response is (the chat template's suffix, end of turn
   included), and the K responses are ranked by reward (dense ranks, ties share one). A prompt whose K rewards
   are all equal carries no preference and is left out of the step (counted in ``online/tied``).

Pair losses then train on the best vs the worst response, listwise losses (``plackett_luce``, ``multi_negative``,
``pairwise_expansion``) on all K, in the same rows as the offline pairs of the batch.
"""
from __future__ import annotations

import importlib
import math
import random
import time
from dataclasses import dataclass, field

import torch

from ..data.schema import response_name
from ..generation import GenerationConfig, _cut, generate_batch

KEYS = {"samples": "responses sampled per prompt (K >= 2)",
        "reward": "{class_path: ..., init_args: {...}}: anyalign.online.ExactMatch, TokenF1, RewardModel, Judge or yours",
        "temperature": "sampling temperature (> 0)", "top_p": "nucleus sampling mass", "max_new_tokens": "per response",
        "stop": "extra stop strings", "seed": "sampling seed (combined with the step and the rank)"}
DEFAULTS = {"samples": 4, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 64, "stop": [], "seed": 0}


def build_reward(spec, key: str = "model.online.reward"):
    """``{class_path, init_args}`` -> the reward object; ValueError naming ``key`` if it cannot be built."""
    if isinstance(spec, str):
        spec = {"class_path": spec}
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise ValueError(f"{key} must be {{class_path: ..., init_args: {{...}}}}, e.g. "
                         "{class_path: anyalign.online.TokenF1}")
    unknown = sorted(set(spec) - {"class_path", "init_args"})
    if unknown:
        raise ValueError(f"{key} has unknown key(s) {unknown}: it takes class_path and init_args")
    path = spec["class_path"]
    if "." not in path:
        path = f"anyalign.online.{path}"
    module, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise ValueError(f"{key}.class_path {spec['class_path']!r} cannot be imported") from None
    try:
        reward = cls(**(spec.get("init_args") or {}))
    except TypeError as e:
        raise ValueError(f"{key}.init_args: {e}") from None
    if not callable(reward):
        raise ValueError(f"{key}.class_path {path!r} is not callable as reward(sample, responses)")
    return reward


@dataclass
class OnlineStats:
    prompts: int = 0            # online prompts in the batch
    rewards: list = field(default_factory=list)   # per scored prompt: its K rewards
    tied: int = 0               # scored prompts whose K rewards were all equal (left out)
    tokens: list = field(default_factory=list)    # generated tokens per response
    seconds: float = 0.0        # generation time


class OnlineSampler:
    def __init__(self, spec: dict):
        if not isinstance(spec, dict):
            raise ValueError("model.online must be a mapping, e.g. {samples: 4, reward: {class_path: "
                             "anyalign.online.TokenF1}}")
        unknown = sorted(set(spec) - set(KEYS))
        if unknown:
            raise ValueError(f"model.online has unknown key(s) {unknown}; its keys: "
                             + "; ".join(f"{k}: {v}" for k, v in KEYS.items()))
        if "reward" not in spec:
            raise ValueError("model.online needs a reward: {class_path: anyalign.online.TokenF1} (or ExactMatch, "
                             "RewardModel, Judge, or your own class)")
        cfg = {**DEFAULTS, **{k: v for k, v in spec.items() if k != "reward"}}
        if not isinstance(cfg["samples"], int) or cfg["samples"] < 2:
            raise ValueError(f"model.online.samples must be an integer >= 2, got {cfg['samples']!r}")
        if not cfg["temperature"] > 0:
            raise ValueError(f"model.online.temperature must be > 0 (K greedy answers are all the same), "
                             f"got {cfg['temperature']!r}")
        try:
            self.generation = GenerationConfig(int(cfg["max_new_tokens"]), float(cfg["temperature"]),
                                               float(cfg["top_p"]), list(cfg["stop"]), int(cfg["seed"]))
        except ValueError as e:
            raise ValueError(f"model.online: {e}") from None
        self.samples, self.seed = cfg["samples"], int(cfg["seed"])
        self.reward = build_reward(spec["reward"])
        self._bound = False

    def bind(self, policy) -> None:
        """The reward's own ``bind(policy)``, once (a reward model or judge loads its checkpoint here)."""
        if not self._bound and hasattr(self.reward, "bind"):
            try:
                self.reward.bind(policy)
            except OSError as e:
                raise ValueError(f"model.online.reward ({type(self.reward).__name__}) cannot load its model: {e}") from e
        self._bound = True

    def rng(self, device, step: int, rank: int) -> torch.Generator:
        seed = random.Random(f"{self.seed}/{step}/{rank}").getrandbits(63)
        return torch.Generator(device=device).manual_seed(seed)

    @torch.no_grad()
    def sample(self, policy, examples: list[dict], step: int = 0, rank: int = 0) -> tuple[list[list[str]], list[list[int]], float]:
        """K responses per example from ``policy`` as it is now: (texts per example, token counts, seconds)."""
        self.bind(policy)
        device = next(policy.parameters()).device
        prepared = [{"ids": ex["prompt"], "media": ex["media"]} for ex in examples]
        was_training = policy.training
        policy.eval()
        t0 = time.perf_counter()
        try:
            tokens = generate_batch(policy, prepared, self.generation, rng=self.rng(device, step, rank),
                                    num_samples=self.samples)
        finally:
            policy.train(was_training)
        seconds = time.perf_counter() - t0
        k = self.samples
        texts = [_cut(policy.tokenizer.decode(t, skip_special_tokens=True), self.generation.stop) for t in tokens]
        return ([texts[i * k:(i + 1) * k] for i in range(len(examples))],
                [[len(t) for t in tokens[i * k:(i + 1) * k]] for i in range(len(examples))], seconds)

    def score(self, ex: dict, texts: list[str]) -> list[float]:
        view = {"key": ex["key"], "url": ex.get("url", ""), "messages": ex["messages"],
                "prompt": next((m["content"] for m in reversed(ex["messages"]) if m["role"] == "user"), ""),
                "media": ex["media"]}
        if "answer" in ex:
            view["answer"] = ex["answer"]
        rewards = self.reward(view, list(texts))
        rewards = [float(r) for r in rewards]
        if len(rewards) != len(texts) or not all(math.isfinite(r) for r in rewards):
            raise ValueError(f"returned {rewards!r}, not {len(texts)} finite numbers")
        return rewards

    def __call__(self, policy, examples: list[dict], tokenizer, step: int = 0, rank: int = 0
                 ) -> tuple[list[dict], list[tuple[str, str, str]], OnlineStats]:
        """The batch's examples with each online one replaced by its K-response example (or dropped: tied, or
        skipped with its reason); offline examples pass unchanged. -> (examples, skipped, stats)."""
        online = [ex for ex in examples if ex.get("online")]
        out = [ex for ex in examples if not ex.get("online")]
        stats, skipped = OnlineStats(prompts=len(online)), []
        if not online:
            return out, skipped, stats
        texts, counts, stats.seconds = self.sample(policy, online, step, rank)
        name = type(self.reward).__name__
        for ex, responses, n in zip(online, texts, counts):
            try:
                rewards = self.score(ex, responses)
            except Exception as e:  # the reward's own failure on this sample: skip it, keep the step
                skipped.append((ex.get("url", ""), ex["key"], f"online reward {name}: {type(e).__name__}: {str(e)[:300]}"))
                continue
            stats.rewards.append(rewards)
            stats.tokens.extend(n)
            if max(rewards) == min(rewards):
                stats.tied += 1
                continue
            try:
                ids = response_ids(tokenizer, ex, responses)
            except Exception as e:  # e.g. a media placeholder generated inside a response
                skipped.append((ex.get("url", ""), ex["key"], f"online sample: {type(e).__name__}: {e}"))
                continue
            order = sorted(set(rewards), reverse=True)
            ranks = [order.index(r) for r in rewards]  # dense, 0 the best
            out.append({"key": ex["key"], "url": ex.get("url", ""), "prompt": ex["prompt"], "media": ex["media"],
                        "responses": {response_name(k): r for k, r in enumerate(ids)}, "ranks": ranks})
        return out, skipped, stats


def response_ids(tokenizer, ex: dict, texts: list[str]) -> list[list[int]]:
    """Each response's ids as an offline response's: the chat template's suffix after the prompt (end of turn
    included), cut to the room ``max_length`` leaves after the prompt."""
    prefix = tokenizer.render(ex["messages"])
    room = tokenizer.max_length - len(ex["prompt"])
    return [tokenizer.response_ids(ex["messages"], prefix, t)[:room] for t in texts]

