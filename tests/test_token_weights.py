"""Weighted spans (DDPO, RLHF-V): schema validation, character spans -> token weights, and their effect on the
sequence log-probs the model computes."""
import json

import pytest
import torch

from anyalign.data.collate import Collator
from anyalign.data.negatives import validate_negatives
from anyalign.data.pipeline import Skipped, decode, read_shards, tokenize
from anyalign.data.schema import parse_record
from anyalign.data.template import PreferenceTokenizer
from modalities import BadSample

from conftest import jpeg_bytes, token_logps, write_shard

CHOSEN = "It shows a small cat on a red mat."
REJECTED = "It shows a dog."


def _parse(**record):
    base = {"prompt": "<image>\nWhat is this?", "chosen": CHOSEN, "rejected": REJECTED}
    return parse_record(json.dumps({**base, **record}).encode())


# --- schema -------------------------------------------------------------------------------------------------

def test_parse_returns_sorted_spans_beside_the_unchanged_responses():
    plain = _parse()
    assert "weights" not in plain  # samples without spans look exactly as before
    rec = _parse(chosen_weights=[{"start": 20, "end": 23, "weight": 3}, {"start": 11, "end": 20, "weight": 1.1}])
    assert rec["weights"] == {"chosen": [(11, 20, 1.1), (20, 23, 3.0)]}  # adjacent spans are fine
    assert isinstance(rec["weights"]["chosen"][1][2], float)
    assert {k: v for k, v in rec.items() if k != "weights"} == plain
    assert "weights" not in _parse(chosen_weights=[])  # an empty list is no spans
    both = _parse(chosen_weights=[{"start": 0, "end": 1, "weight": 0}],
                  rejected_weights=[{"start": 9, "end": len(REJECTED), "weight": 2.5}])
    assert both["weights"] == {"chosen": [(0, 1, 0.0)], "rejected": [(9, 15, 2.5)]}
    # a response given as one assistant message: offsets into its content
    msg = _parse(chosen=[{"role": "assistant", "content": "A cat."}],
                 chosen_weights=[{"start": 2, "end": 5, "weight": 3.0}])
    assert msg["responses"]["chosen"] == "A cat." and msg["weights"] == {"chosen": [(2, 5, 3.0)]}
    unpaired = parse_record(json.dumps({"prompt": "hi", "completion": "A cat.", "label": True,
                                        "completion_weights": [{"start": 2, "end": 5, "weight": 1.1}]}).encode())
    assert unpaired["responses"] == {"completion": "A cat."} and unpaired["desirable"] is True
    assert unpaired["weights"] == {"completion": [(2, 5, 1.1)]}


def _span(**kw):
    return {"start": 0, "end": 3, "weight": 2.0, **kw}


BAD = [
    ({"chosen_weights": {"start": 0, "end": 3, "weight": 2.0}}, r"'chosen_weights' must be a list"),
    ({"chosen_weights": [[0, 3, 2.0]]}, r"chosen_weights\[0\] must be an object"),
    ({"chosen_weights": [{"start": 0, "end": 3}]}, r"chosen_weights\[0\] has no 'weight'"),
    ({"chosen_weights": [_span(w=1)]}, r"chosen_weights\[0\] has unknown key"),
    ({"chosen_weights": [_span(start=0.0)]}, r"chosen_weights\[0\]: 'start' and 'end' must be integers"),
    ({"chosen_weights": [_span(end="3")]}, r"chosen_weights\[0\]: 'start' and 'end' must be integers"),
    ({"chosen_weights": [_span(start=True)]}, r"chosen_weights\[0\]: 'start' and 'end' must be integers"),
    ({"chosen_weights": [_span(start=3, end=3)]}, r"chosen_weights\[0\]: span \[3, 3\) is empty or outside"),
    ({"chosen_weights": [_span(start=5, end=2)]}, r"chosen_weights\[0\]: span \[5, 2\) is empty or outside"),
    ({"chosen_weights": [_span(start=-1)]}, r"chosen_weights\[0\]: span \[-1, 3\) is empty or outside"),
    ({"rejected_weights": [_span(end=len(REJECTED) + 1)]}, r"rejected_weights\[0\]: span .* outside .* <= 15"),
    ({"chosen_weights": [_span(), _span(start=5, end=9), _span(start=2, end=4)]},
     r"'chosen_weights': spans \[0, 3\) and \[2, 4\) overlap"),
    ({"chosen_weights": [_span(weight=-0.5)]}, r"chosen_weights\[0\]: 'weight' must be a finite number >= 0"),
    ({"chosen_weights": [_span(weight="3")]}, r"chosen_weights\[0\]: 'weight' must be a finite number"),
    ({"chosen_weights": [_span(weight=True)]}, r"chosen_weights\[0\]: 'weight' must be a finite number"),
    ({"chosen_weights": [_span(weight=None)]}, r"chosen_weights\[0\]: 'weight' must be a finite number"),
    ({"completion_weights": [_span()]}, r"'completion_weights' is given but the sample has no 'completion'"),
]


@pytest.mark.parametrize("extra, reason", BAD)
def test_bad_spans_make_the_sample_bad(extra, reason):
    with pytest.raises(BadSample, match=reason):
        _parse(**extra)


@pytest.mark.parametrize("weight", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_bad(weight):
    data = json.dumps({"prompt": "x", "chosen": CHOSEN, "rejected": REJECTED,
                       "chosen_weights": [{"start": 0, "end": 3, "weight": weight}]})  # NaN / Infinity: json reads them
    with pytest.raises(BadSample, match=r"chosen_weights\[0\]: 'weight' must be a finite number"):
        parse_record(data.encode())


def test_weights_for_a_missing_response_of_an_unpaired_sample_are_bad():
    data = {"prompt": "x", "completion": "A cat.", "label": False, "chosen_weights": [_span()]}
    with pytest.raises(BadSample, match="'chosen_weights' is given but the sample has no 'chosen'"):
        parse_record(json.dumps(data).encode())


def test_a_bad_span_skips_only_its_sample_with_the_reason(tmp_path, image_model):
    adapters = dict(image_model.adapters.items())
    good = {"prompt": "<image>\nWhat?", "chosen": CHOSEN, "rejected": REJECTED,
            "chosen_weights": [{"start": 0, "end": 2, "weight": 3.0}]}
    bad = {**good, "rejected_weights": [{"start": 0, "end": 99, "weight": 3.0}]}
    shard = write_shard(tmp_path / "s.tar", [{"__key__": "a", "json": bad, "jpg": jpeg_bytes(0)},
                                             {"__key__": "b", "json": good, "jpg": jpeg_bytes(1)}])
    out = list(decode(read_shards(iter([shard])), adapters))
    assert isinstance(out[0], Skipped) and out[0].key == "a" and "rejected_weights[0]" in out[0].reason
    assert out[1]["key"] == "b" and out[1]["weights"] == {"chosen": [(0, 2, 3.0)]}


# --- character spans -> token weights ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_tokenizer(tiny_lm):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_lm)


def _char_ranges(tokenizer, ids: list[int]) -> list[tuple[int, int]]:
    """Each token's characters in the decoded text, from decoding token by token (ASCII text only): an
    independent check on the offset mapping."""
    out, at = [], 0
    for i in ids:
        n = len(tokenizer.decode([i]))
        out.append((at, at + n))
        at += n
    return out


def _expected(tokenizer, ids, spans, start=0):
    """Token weights by hand: a token whose decoded characters overlap a span takes its weight."""
    weights = []
    for a, b in _char_ranges(tokenizer, ids):
        a, b = a - start, b - start
        hit = [w for s, e, w in spans if a < e and b > s]
        weights.append(hit[0] if hit else 1.0)
    return weights


MESSAGES = [{"role": "user", "content": "What is this?"}]


def test_spans_map_to_the_tokens_that_overlap_them(hf_tokenizer):
    tok = PreferenceTokenizer(hf_tokenizer, {}, 256)
    cat = CHOSEN.index("small cat")
    spans = [(cat, cat + len("small cat"), 3.0), (CHOSEN.index("red") + 1, CHOSEN.index("red") + 2, 0.5)]
    out = tok(MESSAGES, {"chosen": CHOSEN, "rejected": REJECTED}, {}, {"chosen": spans})
    plain = tok(MESSAGES, {"chosen": CHOSEN, "rejected": REJECTED}, {})
    assert out["responses"] == plain["responses"] and out["prompt"] == plain["prompt"]  # same ids
    assert set(out["weights"]) == {"chosen"}  # no spans, no list: rejected keeps the cheap path
    ids, weights = out["responses"]["chosen"], out["weights"]["chosen"]
    assert len(weights) == len(ids)
    assert weights == _expected(hf_tokenizer, ids, spans)
    text = [hf_tokenizer.decode([i]) for i in ids]
    # the tiny vocabulary splits " small" into " s", "ma", "ll"; " s" starts one character before the span
    assert [t for t, w in zip(text, weights) if w == 3.0] == [" s", "ma", "ll", " cat"]
    assert [t for t, w in zip(text, weights) if w == 0.5] == [" re"]  # one character inside: the whole token
    assert text[-2:] == ["<|im_end|>", "\n"] and weights[-2:] == [1.0, 1.0]  # template tokens weigh 1
    assert weights.count(1.0) == len(ids) - 5


def test_truncation_cuts_weights_with_ids(hf_tokenizer):
    full = PreferenceTokenizer(hf_tokenizer, {}, 256)
    spans = {"chosen": [(0, len(CHOSEN), 2.0)]}
    whole = full(MESSAGES, {"chosen": CHOSEN, "rejected": REJECTED}, {}, spans)
    room = 4
    cut = PreferenceTokenizer(hf_tokenizer, {}, len(whole["prompt"]) + room)(
        MESSAGES, {"chosen": CHOSEN, "rejected": REJECTED}, {}, spans)
    assert cut["responses"]["chosen"] == whole["responses"]["chosen"][:room]
    assert cut["weights"]["chosen"] == whole["weights"]["chosen"][:room] == [2.0] * room


def test_spans_follow_the_response_where_the_template_puts_it(hf_tokenizer):
    import copy
    base = hf_tokenizer.chat_template
    # a template that writes text before the content which contains the response itself ("think")
    hf = copy.copy(hf_tokenizer)
    hf.chat_template = base.replace("{{- message['content'] -}}",
                                    "{%- if message['role'] == 'assistant' -%}{{- '<think>think</think>' -}}{%- endif -%}"
                                    "{{- message['content'] -}}")
    tok = PreferenceTokenizer(hf, {}, 256)
    out = tok(MESSAGES, {"chosen": "think", "rejected": "no"}, {}, {"chosen": [(0, 5, 3.0)]})
    ids, weights = out["responses"]["chosen"], out["weights"]["chosen"]
    start = len("<think>think</think>")
    assert weights == _expected(hf, ids, [(0, 5, 3.0)], start)
    text = [hf.decode([i]) for i in ids]
    assert "".join(t for t, w in zip(text, weights) if w == 3.0) == "think"
    assert weights[:3] != [3.0] * 3  # not the copy inside the template's own text
    # a template that trims the content: offsets still count from the untrimmed response
    hf.chat_template = base.replace("{{- message['content'] -}}", "{{- message['content'] | trim -}}")
    out = PreferenceTokenizer(hf, {}, 256)(MESSAGES, {"chosen": "  A cat. ", "rejected": "no"}, {},
                                           {"chosen": [(4, 7, 3.0)]})
    text = [hf.decode([i]) for i in out["responses"]["chosen"]]
    assert [t for t, w in zip(text, out["weights"]["chosen"]) if w == 3.0] == [" cat"]
    # a template that rewrites the content: the spans cannot be placed, the sample is bad
    hf.chat_template = base.replace("{{- message['content'] -}}", "{{- message['content'] | upper -}}")
    with pytest.raises(BadSample, match="changes the text of 'chosen'"):
        PreferenceTokenizer(hf, {}, 256)(MESSAGES, {"chosen": "a cat", "rejected": "no"}, {},
                                         {"chosen": [(2, 5, 3.0)]})


# --- the effect on the model's log-probs --------------------------------------------------------------------

# Short enough that every sequence log-prob stays under 64 in magnitude (float32 spacing <= 7.6e-6 there):
# the sums are float32, and a tolerance of 1e-5 needs them small.
SHORT = "A small cat."
SPAN = (SHORT.index("cat"), SHORT.index("cat") + len("cat"))


def _batch(model, tmp_path, name, extra, layout="shared", negatives=None, corrupt_kinds=("chosen_corrupt",)):
    """Two pairs through the real stages (shard -> decode -> tokenize -> collate); ``extra`` goes into the
    first sample's json."""
    samples = [{"__key__": "a", "json": {"prompt": "<image>\nWhat is this?", "chosen": SHORT, "rejected": REJECTED,
                                         **extra}, "jpg": jpeg_bytes(0)},
               {"__key__": "b", "json": {"prompt": "<image>\nAnd this?", "chosen": "A cup.", "rejected": "Coins."},
                "jpg": jpeg_bytes(1)}]
    adapters = dict(model.adapters.items())
    tok = PreferenceTokenizer(model.tokenizer, model.media_token_ids, 256)
    exs = list(tokenize(decode(read_shards(iter([write_shard(tmp_path / f"{name}.tar", samples)])), adapters),
                        tok, adapters))
    assert not any(isinstance(x, Skipped) for x in exs)
    spec = validate_negatives(negatives, adapters) if negatives else None
    return exs, Collator(layout, model.tokenizer.pad_token_id, adapters, negatives=spec, corrupt_kinds=corrupt_kinds)(exs)


@pytest.mark.parametrize("layout, w", [("shared", 3.0), ("concatenated", 3.0), ("shared", 1.1), ("shared", 0.0)])
def test_a_weighted_span_changes_exactly_its_tokens_contribution(image_model, tmp_path, layout, w):
    model = image_model.eval()
    with torch.no_grad():
        plain_exs, plain = _batch(model, tmp_path, "plain", {}, layout)
        exs, weighted = _batch(model, tmp_path, "weighted",
                               {"chosen_weights": [{"start": SPAN[0], "end": SPAN[1], "weight": w}]}, layout)
        ones_exs, ones = _batch(model, tmp_path, "ones",
                                {"chosen_weights": [{"start": 0, "end": len(SHORT), "weight": 1.0}],
                                 "rejected_weights": [{"start": 0, "end": 3, "weight": 1}]}, layout)
        lp_plain, lp_weighted, lp_ones = model(plain).logps, model(weighted).logps, model(ones).logps
        ex = exs[0]
        ids = ex["responses"]["chosen"]
        assert ids == plain_exs[0]["responses"]["chosen"] and weighted["input_ids"].equal(plain["input_ids"])
        # which tokens are in the span: by decoding, independently of the offset mapping
        in_span = [w_ != 1.0 for w_ in _expected(model.tokenizer, ids, [(*SPAN, w)])]
        assert sum(in_span) == 1  # " cat"
        per_token = token_logps(model, ex, "chosen")
        span_sum = per_token[torch.tensor(in_span)].sum()

    c, r = weighted["index"]["chosen"][0], weighted["index"]["rejected"][0]
    torch.testing.assert_close(lp_weighted[c] - lp_plain[c], (w - 1) * span_sum, atol=1e-5, rtol=0)
    # every other sequence (the rejected response, the other sample) is untouched
    others = [i for i in range(weighted["num_sequences"]) if i != c]
    assert torch.equal(lp_weighted[others], lp_plain[others])
    # per token: the span's tokens carry w in the batch, every other scored token 1
    scored = weighted["target_seq"] >= 0
    assert torch.equal(weighted["token_weights"][weighted["target_seq"] != c], plain["token_weights"][plain["target_seq"] != c])
    chosen_weights = weighted["token_weights"][weighted["target_seq"] == c]
    assert torch.equal(chosen_weights, torch.tensor([w if s else 1.0 for s in in_span]))
    assert (plain["token_weights"][scored] == 1.0).all() and (weighted["token_weights"][~scored] == 0).all()
    # weight 1 everywhere: the unweighted log-probs, exactly
    assert "weights" in ones_exs[0]
    assert torch.equal(ones["token_weights"], plain["token_weights"]) and torch.equal(lp_ones, lp_plain)
    assert r >= 0


def test_the_conditional_rows_carry_their_responses_weights(image_model, tmp_path):
    negatives = {"image": [{"op": "null", "p": 1.0}]}
    spans = {"chosen_weights": [{"start": SPAN[0], "end": SPAN[1], "weight": 3.0}],
             "rejected_weights": [{"start": 0, "end": 2, "weight": 0.0}]}
    for layout in ("shared", "concatenated"):
        exs, batch = _batch(image_model, tmp_path, "neg", spans, layout, negatives,
                            ("chosen_corrupt", "rejected_corrupt"))
        ix = batch["index"]
        weights = {name: batch["token_weights"][batch["target_seq"] == ix[name][0]].tolist()
                   for name in ("chosen", "rejected", "chosen_corrupt", "rejected_corrupt")}
        assert weights["chosen"] == exs[0]["weights"]["chosen"] == weights["chosen_corrupt"]
        assert 3.0 in weights["chosen_corrupt"]
        assert weights["rejected"] == exs[0]["weights"]["rejected"] == weights["rejected_corrupt"]
        assert weights["rejected"][0] == 0.0
        for name in ("chosen_corrupt", "rejected_corrupt"):
            other = batch["token_weights"][batch["target_seq"] == ix[name][1]]
            assert (other == 1.0).all()  # the unweighted sample's conditional rows


def test_kl_rows_take_the_next_completions_weights(image_model, tmp_path):
    adapters = dict(image_model.adapters.items())
    samples = [{"__key__": k, "json": {"prompt": "<image>\nWhat?", "completion": CHOSEN, "label": k != "b", **extra},
                "jpg": jpeg_bytes(i)}
               for i, (k, extra) in enumerate([("a", {}), ("b", {"completion_weights": [
                   {"start": SPAN[0], "end": SPAN[1], "weight": 3.0}]})])]
    tok = PreferenceTokenizer(image_model.tokenizer, image_model.media_token_ids, 256)
    exs = list(tokenize(decode(read_shards(iter([write_shard(tmp_path / "u.tar", samples)])), adapters),
                        tok, adapters))
    assert "weights" not in exs[0] and 3.0 in exs[1]["weights"]["completion"]
    for layout in ("shared", "concatenated"):
        batch = Collator(layout, 0, adapters)(exs)
        ix = batch["index"]

        def weights(name, i):
            return batch["token_weights"][batch["target_seq"] == ix[name][i]].tolist()
        assert weights("completion", 1) == exs[1]["weights"]["completion"] == weights("kl", 0)
        assert weights("completion", 0) == weights("kl", 1) == [1.0] * len(exs[0]["responses"]["completion"])


def test_unpair_moves_each_responses_spans_with_it():
    from anyalign.data.pipeline import unpair
    ex = {"key": "k", "url": "u", "messages": [], "media": {},
          "responses": {"chosen": "A small cat.", "rejected": "A dog."},
          "weights": {"rejected": [(2, 5, 3.0)]}}
    chosen, rejected = list(unpair(iter([ex])))
    assert "weights" not in chosen and chosen["responses"] == {"completion": "A small cat."}
    assert rejected["weights"] == {"completion": [(2, 5, 3.0)]} and rejected["desirable"] is False
