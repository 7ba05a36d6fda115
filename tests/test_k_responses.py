"""K responses per prompt: ranked or scored samples in one row (the prompt and media once, every response seeing
the prompt only), the listwise losses (Plackett-Luce, multi-negative, the pairwise expansion) against values
computed by hand, converters, bad samples skipped with reasons, reference strategies, and a short fit.

The row is exact: each response's log-prob (and gradient) in the K-response row equals the one from a row of its
own (the concatenated layout, media duplicated) and from a plain Hugging Face forward, fp32, atol 1e-4.
"""
import io
import itertools
import json
import math
import tarfile

import pytest
import torch

from anyalign.data.collate import Collator, add_listwise, collate_rows, rows_for
from anyalign.data.pipeline import Skipped, decode, unpair
from anyalign.data.schema import parse_record
from anyalign.losses import LOSSES, validate_terms
from anyalign.model import MultimodalLM, StepCache

from conftest import ROOT, separate_logp, write_shard

LISTWISE = ("plackett_luce", "multi_negative", "pairwise_expansion")
INF = math.inf


def logsig(x):  # log σ(x), written out so the expected values do not reuse torch's formula
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def lse(*xs):
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


# ---- the losses, by hand ----
# one sample, K = 3: policy [-10, -12, -11], reference [-11, -11, -11] -> r = [1, -1, 0]; ranks: 0 best
K3 = {"policy_responses": [[-10.0, -12.0, -11.0]], "reference_responses": [[-11.0, -11.0, -11.0]],
      "ranks": [[0.0, 2.0, 1.0]]}  # order: response 0, then 2, then 1; s = β r = [0.1, -0.1, 0]
# the same with responses 1 and 2 tied below response 0 (scores [5, 1, 1])
K3_TIE = {**K3, "ranks": [[0.0, 1.0, 1.0]]}
# two samples in one batch: K = 3 and a pair padded to K = 3 (rank +inf: absent, its log-prob read as 0)
PADDED = {"policy_responses": [[-10.0, -12.0, -11.0], [-4.0, -6.0, 0.0]],
          "reference_responses": [[-11.0, -11.0, -11.0], [-5.0, -5.0, 0.0]],
          "ranks": [[0.0, 2.0, 1.0], [0.0, 1.0, INF]]}  # second: r = [1, -1], s = [0.1, -0.1]
# a ranking whose best is the policy's least likely: r = [-2, 0, 3] with ranks [0, 1, 2] (s at β = 1)
WRONG = {"policy_responses": [[-12.0, -10.0, -7.0]], "reference_responses": [[-10.0, -10.0, -10.0]],
         "ranks": [[0.0, 1.0, 2.0]]}

s0, s1, s2 = 0.1, -0.1, 0.0
K_CASES = {
    "plackett_luce": [  # -Σ_k [s_(k) - log Σ_{j≥k} exp s_(j)], order 0, 2, 1
        (K3, {}, [-(s0 - lse(s0, s2, s1)) - (s2 - lse(s2, s1))], ([0.1], [-0.1])),
        # Breslow ties: response 0 over all; 1 and 2 tied at the worst rank have no term
        (K3_TIE, {}, [-(s0 - lse(s0, s1, s2))], ([0.1], [0.0])),  # worst: the last of the worst rank (2)
        (PADDED, {}, [-(s0 - lse(s0, s2, s1)) - (s2 - lse(s2, s1)), -logsig(0.2)], ([0.1, 0.1], [-0.1, -0.1])),
        (WRONG, {"beta": 1.0}, [-(-2 - lse(-2, 0, 3)) - (0 - lse(0, 3))], ([-2.0], [3.0])),
    ],
    "multi_negative": [  # -log [e^{s_w} / (e^{s_w} + Σ_l e^{s_l})]
        (K3, {}, [-(s0 - lse(s0, s1, s2))], ([0.1], [-0.1])),
        (K3_TIE, {}, [-(s0 - lse(s0, s1, s2))], ([0.1], [0.0])),
        # two tied best (ranks [0, 0, 1]): each against the worse one, averaged
        ({**K3, "ranks": [[0.0, 0.0, 1.0]]}, {}, [0.5 * (-(s0 - lse(s0, s2)) - (s1 - lse(s1, s2)))],
         ([0.1], [0.0])),
        (PADDED, {}, [-(s0 - lse(s0, s1, s2)), -logsig(0.2)], ([0.1, 0.1], [-0.1, -0.1])),
        (WRONG, {"beta": 1.0}, [-(-2 - lse(-2, 0, 3))], ([-2.0], [3.0])),
    ],
    "pairwise_expansion": [  # mean over ordered pairs of -log σ(s_i - s_j)
        (K3, {}, [-(logsig(s0 - s2) + logsig(s0 - s1) + logsig(s2 - s1)) / 3], ([0.1], [-0.1])),
        (K3_TIE, {}, [-(logsig(s0 - s1) + logsig(s0 - s2)) / 2], ([0.1], [0.0])),  # the tied pair left out
        (PADDED, {}, [-(logsig(s0 - s2) + logsig(s0 - s1) + logsig(s2 - s1)) / 3, -logsig(0.2)],
         ([0.1, 0.1], [-0.1, -0.1])),
        (K3, {"label_smoothing": 0.1},
         [sum(-0.9 * logsig(x) - 0.1 * logsig(-x) for x in (s0 - s2, s0 - s1, s2 - s1)) / 3], ([0.1], [-0.1])),
        (WRONG, {"beta": 1.0}, [-(logsig(-2.0) + logsig(-5.0) + logsig(-3.0)) / 3], ([-2.0], [3.0])),
    ],
}


def _tensors(inputs: dict) -> dict:
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in inputs.items()}


@pytest.mark.parametrize("name, i", [(n, i) for n, cases in K_CASES.items() for i in range(len(cases))])
def test_listwise_loss_matches_hand_computed(name, i):
    inputs, params, expected, rewards = K_CASES[name][i]
    losses, chosen_r, rejected_r = LOSSES[name].fn(**_tensors(inputs), **params)
    assert losses.tolist() == pytest.approx(expected, abs=1e-12)
    assert chosen_r.tolist() == pytest.approx(rewards[0], abs=1e-12)
    assert rejected_r.tolist() == pytest.approx(rewards[1], abs=1e-12)


@pytest.mark.parametrize("name", LISTWISE)
def test_k2_is_dpo(name):
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (-20 * torch.rand(16, generator=g, dtype=torch.float64) for _ in range(4))
    dpo, c, r = LOSSES["sigmoid"].fn(pc, pr, rc, rr, beta=0.3)
    listwise = LOSSES[name].fn(torch.stack([pc, pr], -1), torch.stack([rc, rr], -1),
                               torch.tensor([[0.0, 1.0]]).expand(16, 2), beta=0.3)
    torch.testing.assert_close(listwise[0], dpo, atol=1e-12, rtol=0)
    torch.testing.assert_close(listwise[1], c), torch.testing.assert_close(listwise[2], r)


def test_plackett_luce_is_the_ranking_likelihood():
    """exp(-loss) summed over all K! orderings of one sample is 1 (a distribution over rankings)."""
    policy = torch.tensor([[-3.0, -1.0, -4.0, -1.5]], dtype=torch.float64)
    ref = torch.tensor([[-2.0, -2.5, -3.0, -1.0]], dtype=torch.float64)
    total = 0.0
    for perm in itertools.permutations(range(4)):
        ranks = torch.empty(1, 4, dtype=torch.float64)
        ranks[0, list(perm)] = torch.arange(4, dtype=torch.float64)
        total += math.exp(-float(LOSSES["plackett_luce"].fn(policy, ref, ranks, beta=0.7)[0]))
    assert total == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("name", LISTWISE)
def test_listwise_gradients_push_better_up(name):
    p = torch.tensor([[-5.0, -5.0, -5.0, 0.0]], dtype=torch.float64, requires_grad=True)
    ref = torch.full((1, 4), -5.0, dtype=torch.float64)
    ranks = torch.tensor([[1.0, 0.0, 2.0, INF]])
    LOSSES[name].fn(p, ref, ranks)[0].sum().backward()
    g = p.grad[0]
    assert g[1] < 0 < g[2] and g[3] == 0  # best pushed up, worst down, the absent entry untouched


def test_listwise_terms_validate_and_name_their_inputs():
    for name in LISTWISE:
        spec = validate_terms([{"name": name}])[0]["spec"]
        assert spec.sequences == {"responses"} and spec.data_inputs == ("ranks",) and spec.needs_reference
        term = validate_terms([{"name": name, "reference_free": True}])[0]
        free = term["spec"]
        assert not free.needs_reference and free.inputs == ("policy_responses", "ranks")
        x = _tensors(K3)
        params = {k: v for k, v in term["params"].items() if k != "reference_free"}
        bound = free.fn(policy_responses=x["policy_responses"], ranks=x["ranks"], **term["params"])
        direct = LOSSES[name].fn(x["policy_responses"], torch.zeros(1, 3, dtype=torch.float64), x["ranks"], **params)
        for a, b in zip(bound, direct):
            torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="label_smoothing"):
        validate_terms([{"name": "pairwise_expansion", "label_smoothing": 0.7}])


# ---- the schema: bad samples skipped with a reason naming the key ----
@pytest.mark.parametrize("record, ranks", [
    ({"responses": ["a", "b", "c"], "scores": [1, 3, 2]}, [2, 0, 1]),
    ({"responses": ["a", "b", "c"], "scores": [1.5, 3, 1.5]}, [1, 0, 1]),
    ({"responses": ["a", "b", "c"], "ranking": [2, 0, 1]}, [1, 2, 0]),
    ({"responses": ["a", "b", "c"], "ranks": [3, 1, 2]}, [2, 0, 1]),
    ({"responses": ["a", [{"role": "assistant", "content": "b"}]], "ranks": [2, 2.5]}, [0, 1]),
])
def test_schema_reads_ranked_and_scored_samples(record, ranks):
    out = parse_record(json.dumps({"prompt": "Q?", **record}).encode())
    assert out["ranks"] == ranks
    assert list(out["responses"]) == [f"response_{k}" for k in range(len(ranks))]
    assert out["responses"]["response_1"] == "b"


BAD = [
    ({"responses": ["a", "b", "c"], "scores": [1, 2]}, "'scores' has 2 entries but 'responses' has 3"),
    ({"responses": ["a", "b"], "ranking": [0, 1, 2]}, "'ranking' has 3 entries but 'responses' has 2"),
    ({"responses": ["a"], "scores": [1]}, "'responses' needs at least 2 responses to rank, got 1"),
    ({"responses": ["a", "b", "c"], "scores": [2, 2, 2]}, "'scores' ties every response"),
    ({"responses": ["a", "b"], "ranks": [1, 1]}, "'ranks' ties every response"),
    ({"responses": ["a", "b", "c"], "ranking": [0, 0, 1]}, "'ranking' must list each response index 0..2 once"),
    ({"responses": ["a", "b"], "scores": [1, float("nan")]}, "'scores' must hold finite numbers"),
    ({"responses": ["a", "b"]}, "exactly one of 'ranking'"),
    ({"responses": ["a", "b"], "scores": [1, 2], "ranks": [0, 1]}, "exactly one of 'ranking'"),
    ({"responses": ["a", "b"], "scores": [1, 2], "chosen": "a"}, "'responses' and 'chosen' in one sample"),
    ({"responses": "a", "scores": [1]}, "'responses' must be a list"),
    ({"responses": ["a", 3], "scores": [1, 2]}, "'responses[1]' must be a string"),
]


@pytest.mark.parametrize("record, reason", BAD)
def test_bad_ranked_samples_are_skipped_naming_the_key(record, reason):
    raw = {"__key__": "k1", "__url__": "u", "json": json.dumps({"prompt": "Q?", **record}).encode()}
    (out,) = list(decode(iter([raw]), {}))
    assert isinstance(out, Skipped) and out.key == "k1" and reason in out.reason, out


def test_k_samples_cannot_be_unpaired():
    ex = {"key": "k", "url": "u", "responses": {"response_0": "a", "response_1": "b"}, "ranks": [0, 1]}
    (out,) = list(unpair(iter([ex])))
    assert isinstance(out, Skipped) and "cannot be unpaired" in out.reason


# ---- converters ----
def test_convert_jsonl_and_ultrafeedback(tmp_path):
    from anyalign.convert import convert
    rows = [
        {"id": "s", "prompt": "Q1", "responses": ["x", "y", "z"], "scores": [1, 3, 2]},
        {"id": "r", "prompt": "Q2", "responses": ["x", "y"], "ranking": [1, 0]},
        {"id": "bad_len", "prompt": "Q3", "responses": ["x", "y", "z"], "scores": [1, 3]},
        {"id": "bad_one", "prompt": "Q4", "responses": ["x"], "scores": [1]},
        {"id": "bad_tie", "prompt": "Q5", "responses": ["x", "y"], "ranks": [2, 2]},
    ]
    src = tmp_path / "a.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows))
    out = convert("jsonl", str(src), str(tmp_path / "j-%03d.tar"), log=None)
    assert out["written"] == 2 and out["skipped"] == 3
    details = [e["key"] + ": " + e["detail"] for e in out["skipped_by_reason"]["malformed record"]["examples"]]
    assert details == ["bad_len: 'scores' has 2 entries but 'responses' has 3",
                       "bad_one: 'responses' needs at least 2 responses to rank, got 1",
                       "bad_tie: 'ranks' ties every response ([2, 2]): nothing to prefer"]
    samples = _read_tar(out["shards"][0])
    assert samples["s"] == {"prompt": "Q1", "responses": ["x", "y", "z"], "scores": [1, 3, 2]}
    assert parse_record(json.dumps(samples["r"]).encode())["ranks"] == [1, 0]

    uf = [
        {"instruction": "Say hi", "completions": [
            {"response": "hi", "overall_score": 7.5, "model": "m1"},
            {"response": "bye", "overall_score": 3},
            {"response": "hello", "annotations": {"helpfulness": {"Rating": "5"}, "honesty": {"Rating": "4"},
                                                  "truthfulness": {"Rating": "N/A"}}}]},
        {"id": "rated", "prompt": "P", "completions": [{"text": "a", "ratings": [1, 2]}, {"text": "b", "ratings": {"x": 4}}]},
        {"id": "unscored", "instruction": "P", "completions": [{"response": "a"}, {"response": "b", "overall_score": 1}]},
        {"id": "tied", "instruction": "P", "completions": [{"response": "a", "overall_score": 2},
                                                           {"response": "b", "overall_score": 2}]},
        {"id": "single", "instruction": "P", "completions": [{"response": "a", "overall_score": 2}]},
    ]
    src = tmp_path / "uf.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in uf))
    out = convert("ultrafeedback", str(src), str(tmp_path / "u-%03d.tar"), log=None)
    assert out["written"] == 2 and out["skipped"] == 3
    reasons = {e["key"]: e["detail"] for r in out["skipped_by_reason"].values() for e in r["examples"]}
    assert "ties every response" in reasons["tied"]
    assert "at least 2 responses" in reasons["single"]
    assert any("completions[0] has no 'overall_score'" in d for d in reasons.values())
    samples = _read_tar(out["shards"][0])
    assert samples["ultrafeedback-00000000"] == {"prompt": "Say hi", "responses": ["hi", "bye", "hello"],
                                                  "scores": [7.5, 3.0, 4.5]}
    assert samples["rated"]["scores"] == [1.5, 4.0]


def _read_tar(path) -> dict:
    with tarfile.open(path) as tar:
        return {m.name.split(".")[0]: json.load(tar.extractfile(m)) for m in tar if m.name.endswith(".json")}


# ---- the K-response row ----
def _video_examples(n=4):
    """Video examples of the shipped video config's demo data, each turned into a K-response sample from its own
    pair and the next example's (K = 4, 3, 4, 3: padded to 4 in the batch), tokenized as the pipeline does."""
    from test_packing import _model_data_examples
    model, data, exs = _model_data_examples("video_dpo", n)
    out = []
    for i, ex in enumerate(exs):
        nxt = exs[(i + 1) % len(exs)]["responses"]
        texts = [ex["responses"]["chosen"], nxt["rejected"], ex["responses"]["rejected"], nxt["chosen"]]
        k = 4 if i % 2 == 0 else 3
        ranks = [0, 2, 3, 1][:k] if k == 4 else [1, 0, 1]
        out.append({**ex, "responses": {f"response_{j}": t for j, t in enumerate(texts[:k])}, "ranks": ranks})
    return model, data, out


def _lp_and_grads(model, batch, weights):
    model.zero_grad()
    out = model(batch, StepCache())
    ix = batch["index"]["responses"]
    lp = out.logps[ix.clamp(min=0)].masked_fill(ix < 0, 0.0)
    (lp * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return lp.detach(), out.tokens[ix.clamp(min=0)].masked_fill(ix < 0, 0), grads


def test_k_row_equals_separate_rows_video():
    model, data, exs = _video_examples(4)
    adapters = dict(model.adapters.items())
    pad = model.tokenizer.pad_token_id
    shared = Collator("shared", pad, adapters, 8, listwise=True)(exs)
    separate = Collator("concatenated", pad, adapters, 8, listwise=True)(exs)
    assert shared["input_ids"].shape[0] == 4 and separate["input_ids"].shape[0] == 14  # 4 rows vs K rows each
    assert shared["index"]["responses"].shape == (4, 4) and shared["index"]["responses"][1, 3] == -1
    assert shared["ranks"][1].tolist() == [1.0, 0.0, 1.0, INF]
    assert not any(n.startswith("response_") for n in shared["index"])
    # the best and the worst response of each sample are chosen and rejected, scored once in the same row
    assert shared["index"]["chosen"].tolist() == shared["index"]["responses"][[0, 1, 2, 3], [0, 1, 0, 1]].tolist()
    assert shared["index"]["rejected"].tolist() == shared["index"]["responses"][[0, 1, 2, 3], [2, 2, 2, 2]].tolist()
    # one prompt per row; the response positions continue from the prompt's end in every slot
    for r, ex in enumerate(exs):
        p = len(ex["prompt"])
        assert int((shared["roles"][r] == 0).sum()) == p and int(shared["roles"][r].max()) == len(ex["ranks"])
        for k in range(1, len(ex["ranks"]) + 1):
            assert shared["position_ids"][r][shared["roles"][r] == k][0] == p
    # media encoded once per sample in the K-row, once per response in separate rows
    assert shared["media"]["video"]["frames"].tolist() == [8] * 4
    assert separate["media"]["video"]["frames"].tolist() == [8] * 14
    weights = torch.randn(4, 4, generator=torch.Generator().manual_seed(0))
    lp_s, tok_s, grad_s = _lp_and_grads(model, shared, weights)
    lp_c, tok_c, grad_c = _lp_and_grads(model, separate, weights)
    assert torch.equal(tok_s, tok_c) and bool((tok_s[0] > 0).all())
    torch.testing.assert_close(lp_s, lp_c, atol=1e-4, rtol=1e-5)
    with torch.no_grad():  # and a plain Hugging Face forward per response
        for i in (0, 1):
            for k in range(len(exs[i]["ranks"])):
                assert float(lp_s[i, k]) == pytest.approx(float(separate_logp(model, exs[i], f"response_{k}")),
                                                          abs=1e-4)
    assert any(n.startswith("adapters.") for n in grad_s) and grad_s.keys() == grad_c.keys()
    for n, g in grad_s.items():
        torch.testing.assert_close(g, grad_c[n], atol=1e-5, rtol=1e-4, msg=n)


@pytest.fixture()
def text_model(tiny_lm):
    torch.manual_seed(0)
    return MultimodalLM(tiny_lm, {}).eval()


def _text_k_examples(model, ks=(4, 2, 3), seed=0):
    import random
    rng = random.Random(seed)
    words = "cats purr dogs bark birds sing fish swim the a and loudly softly often never blue seven".split()

    def ids(n):
        return model.tokenizer(" ".join(rng.choice(words) for _ in range(n)), add_special_tokens=False)["input_ids"]
    out = []
    for i, k in enumerate(ks):
        ranks = list(range(k))
        rng.shuffle(ranks)
        out.append({"key": f"t{i}", "url": "", "prompt": ids(rng.randint(3, 9)), "media": {},
                    "responses": {f"response_{j}": ids(rng.randint(1, 12)) for j in range(k)}, "ranks": ranks})
    return out


def test_k_row_flex_block_mask_equals_dense(text_model, eager_flex):  # noqa: F811
    exs = _text_k_examples(text_model)
    batch = Collator("shared", text_model.tokenizer.pad_token_id, {}, 8)(exs)
    with torch.no_grad():
        sdpa = text_model(batch)
        text_model.lm.set_attn_implementation("flex_attention")
        cache = StepCache()
        flex = text_model(batch, cache)
    assert [type(m).__name__ for m in cache.masks.values()] == ["BlockMask"]
    torch.testing.assert_close(flex.logps, sdpa.logps, atol=1e-4, rtol=1e-5)


def test_k_rows_pack(text_model):
    """K-response groups pack like pairs: several per row, the same log-probs."""
    exs = _text_k_examples(text_model, (4, 2, 3, 3, 2))
    pad = text_model.tokenizer.pad_token_id
    plain = Collator("shared", pad, {}, 1)(exs)
    packed = Collator("shared", pad, {}, 1, pack=2 * int((plain["roles"] >= 0).sum(1).max()))(exs)
    assert packed["input_ids"].shape[0] < len(exs)
    with torch.no_grad():
        a, b = text_model(plain), text_model(packed)
    ia, ib = plain["index"]["responses"], packed["index"]["responses"]
    torch.testing.assert_close(b.logps[ib.clamp(min=0)][ib >= 0], a.logps[ia.clamp(min=0)][ia >= 0], atol=1e-4,
                               rtol=1e-5)


def test_pairs_are_k2_for_listwise_terms(text_model):
    exs = [{"key": "p", "url": "", "prompt": [5, 6, 7], "media": {}, "responses": {"chosen": [8, 9], "rejected": [10]}}]
    exs += _text_k_examples(text_model, (3,))
    batch = Collator("shared", text_model.tokenizer.pad_token_id, {}, 1, listwise=True)(exs)
    ix = batch["index"]["responses"]
    assert ix[0].tolist() == [batch["index"]["chosen"][0], batch["index"]["rejected"][0], -1]
    assert batch["ranks"][0].tolist() == [0.0, 1.0, INF]
    plain = Collator("shared", text_model.tokenizer.pad_token_id, {}, 1)(exs[:1])
    assert "responses" not in plain["index"] and "ranks" not in plain  # pairs without a listwise term: unchanged


# ---- the module: losses on K data, reference strategies, negatives ----
def _write_k_shards(tmp_path, n=16, name="train"):
    import random
    rng = random.Random(1)
    good = ["The cat sleeps on the sofa.", "A cat is sleeping.", "It is a cat."]
    bad = ["Seven blue dogs bark loudly.", "Fish swim never often.", "The the the."]
    samples = []
    for i in range(n):
        responses = [rng.choice(good), rng.choice(bad), rng.choice(good) + " Yes.", rng.choice(bad) + " No."]
        scores = [4.0, 1.0, 3.0, 2.0]
        samples.append({"__key__": f"k{i:03d}", "json": {"prompt": f"What is shown in picture {i}?",
                                                         "responses": responses, "scores": scores}})
    return write_shard(tmp_path / f"{name}-000.tar", samples)


def _module(tiny_lm, losses, **kw):
    from anyalign.module import AlignModule
    torch.manual_seed(0)
    return AlignModule(lm=tiny_lm, losses=losses, export_dir=None, scheduler="constant", lr=2e-3, **kw)


def _batches(module, url, batch_size=4):
    from anyalign.data import PreferenceDataModule
    data = PreferenceDataModule(url, batch_size=batch_size, num_workers=0, shuffle_buffer=1, max_length=128)
    module.bind_data(data)
    return data, list(data._process(batch_size, data.negatives if data.train_negatives else None)(
        iter(_raw(url))))


def _raw(url):
    from anyalign.data.pipeline import read_shards
    return read_shards(iter([url]))


@pytest.mark.parametrize("reference", ["frozen_copy", "adapter_disabled"])
def test_reference_strategies_on_k_data(tiny_lm, tmp_path, reference):
    url = _write_k_shards(tmp_path, 4)
    lora = {"r": 4, "lora_alpha": 8} if reference == "adapter_disabled" else None
    losses = [{"name": "plackett_luce"}, {"name": "multi_negative", "weight": 0.5},
              {"name": "pairwise_expansion", "weight": 0.5}, {"name": "sigmoid", "weight": 0.5}]
    module = _module(tiny_lm, losses, reference=reference, lora=lora, reward_term="plackett_luce")
    module.reference.setup(module.policy, torch.device("cpu"), share_frozen=True)
    _, (batch,) = _batches(module, url)
    assert batch["index"]["responses"].shape == (4, 4)
    loss, outputs = module.loss_terms(module.policy(batch), module.reference(batch), batch)
    # reference = initial policy: every r = 0, so each term is its value at equal rewards
    pl, mn, pe, dpo = (o.losses for o in outputs)
    torch.testing.assert_close(pl, torch.full((4,), math.log(24.0)), atol=1e-5, rtol=0)  # log 4!
    torch.testing.assert_close(mn, torch.full((4,), math.log(4.0)), atol=1e-5, rtol=0)
    torch.testing.assert_close(pe, torch.full((4,), math.log(2.0)), atol=1e-5, rtol=0)
    torch.testing.assert_close(dpo, torch.full((4,), math.log(2.0)), atol=1e-5, rtol=0)  # best vs worst


def test_precomputed_reference_refuses_listwise_terms(tiny_lm, tmp_path):
    with pytest.raises(ValueError, match="cannot store reference log-probs of 'responses'.*frozen_copy"):
        _module(tiny_lm, [{"name": "plackett_luce"}], reference="precomputed", reference_cache=str(tmp_path))


def test_negatives_score_the_best_response_under_corrupted_media():
    from test_packing import _model_data_examples
    model, data, exs = _model_data_examples("video_dpo", 2)
    k_exs = [{**ex, "responses": {"response_0": ex["responses"]["rejected"], "response_1": ex["responses"]["chosen"]},
              "ranks": [1, 0]} for ex in exs]
    batch = Collator("shared", model.tokenizer.pad_token_id, dict(model.adapters.items()), 8,
                     data.held_out_negatives, data.seed)(k_exs)
    assert batch["input_ids"].shape[0] == 4  # a K-row and a corrupted-media row per sample
    with torch.no_grad():
        out = model(batch)
    ix = batch["index"]
    for i, ex in enumerate(k_exs):  # the corrupted row holds the best response (response_1: the pair's chosen)
        assert int(out.tokens[ix["chosen_corrupt"][i]]) == len(ex["responses"]["response_1"])
        assert ix["chosen"][i] == ix["responses"][i, 1]
    assert not torch.allclose(out.logps[ix["chosen"]], out.logps[ix["chosen_corrupt"]])


@pytest.mark.parametrize("name", LISTWISE)
def test_short_fit_on_k_data_lowers_the_loss(tiny_lm, tmp_path, name):
    url = _write_k_shards(tmp_path, 8)
    module = _module(tiny_lm, [{"name": name, "beta": 0.5}], reference="frozen_copy")
    module.reference.setup(module.policy, torch.device("cpu"), share_frozen=True)
    _, batches = _batches(module, url, batch_size=8)
    (batch,) = batches
    opt = torch.optim.AdamW([p for p in module.policy.parameters() if p.requires_grad], lr=2e-3)

    def loss():
        return module.loss_terms(module.policy(batch), module.reference(batch), batch)[0]
    module.policy.train()
    first = float(loss())
    for _ in range(6):
        opt.zero_grad()
        loss().backward()
        opt.step()
    module.policy.eval()
    with torch.no_grad():
        last = float(loss())
    assert last < first - 0.05, (first, last)


def test_fit_on_k_shards_runs(tmp_path, monkeypatch):
    """Two optimizer steps of a real fit (Lightning, the data module) on K-response shards with Plackett-Luce."""
    from anyalign.__main__ import main
    monkeypatch.chdir(ROOT)
    url = _write_k_shards(tmp_path, 8)
    main(["fit", "--config", "configs/image_dpo.yaml", "--trainer.max_steps", "2", "--data.batch_size", "4",
          "--data.train_shards", url, "--data.val_shards", url,
          "--trainer.enable_progress_bar", "false", "--trainer.num_sanity_val_steps", "0",
          "--trainer.limit_val_batches", "1", "--trainer.default_root_dir", str(tmp_path), "--data.num_workers", "0",
          "--model.export_dir", "null", "--trainer.logger", "false", "--trainer.callbacks", "[]",
          "--model.losses", json.dumps([{"name": "plackett_luce"}])])


def test_pair_term_on_k_data_with_a_precomputed_reference(tmp_path, monkeypatch):
    """A pair term on K-response shards (best vs worst) trains with a precomputed reference: at the first step the
    policy is the reference, so the loss is log 2."""
    from anyalign.__main__ import main
    from test_resume import _read
    monkeypatch.chdir(ROOT)
    url, cache, log = _write_k_shards(tmp_path, 8), tmp_path / "cache", tmp_path / "steps.jsonl"

    def args(cmd, callbacks=()):
        return [cmd, "--config", "configs/image_dpo.yaml", "--trainer.max_steps", "2", "--data.batch_size", "4",
                "--data.train_shards", url, "--data.val_shards", url, "--trainer.enable_progress_bar", "false",
                "--trainer.num_sanity_val_steps", "0", "--trainer.limit_val_batches", "0",
                "--trainer.default_root_dir", str(tmp_path / cmd), "--data.num_workers", "0",
                "--model.export_dir", "null", "--trainer.logger", "false", "--trainer.callbacks", json.dumps(callbacks),
                "--model.reference", "precomputed", "--model.reference_cache", str(cache)]
    main(args("precompute"))
    assert json.loads((cache / "manifest.json").read_text())["sequences"] == ["chosen", "rejected"]
    main(args("fit", [{"class_path": "test_resume.Recorder", "init_args": {"path": str(log)}}]))
    steps = _read(log)
    assert len(steps) == 2 and steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)


from test_attention import eager_flex  # noqa: E402,F401  (fixture)
