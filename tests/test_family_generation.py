"""Generation from a pretrained family through anyalign (``anyalign.generation.generate``: the family's processor,
then its own ``generate`` with a KV cache) gives the tokens that greedy decoding by full forwards of the family
model gives, for every family and modality, Qwen2.5-Omni's video with its soundtrack included."""
from __future__ import annotations

import pytest
import torch

from anyalign.data.pipeline import decode, read_shards
from anyalign.generation import generate, prepare

from conftest import ROOT
from test_families import policy

CASES = [("llava", "image"), ("llava_onevision", "video"), ("qwen2_vl", "image"), ("qwen2_5_vl", "video"),
         ("smolvlm", "image"), ("gemma3", "image"), ("qwen2_audio", "audio"),
         ("qwen2_5_omni_thinker", "image"), ("qwen2_5_omni_thinker", "audio_visual")]


def first_sample(model, modality: str) -> dict:
    raws = read_shards(iter([str(ROOT / f"assets/data/{modality}/val-000.tar")]))
    ex = next(decode(raws, dict(model.adapters.items())))
    return {"prompt": ex["messages"][-1]["content"], "media": ex["media"]}


def stop_ids(model) -> set[int]:
    eos = model.hf.generation_config.eos_token_id
    return {model.tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos])} - {None}


def greedy_by_full_forwards(model, ready: dict, steps: int) -> list[int]:
    hf, ids = model.hf, torch.tensor([ready["ids"]])
    media = {}
    for m, items in ready["media"].items():
        media.update(model.adapters[m].collate_samples([items]))
    extra = model.family.generate_kwargs(hf, ids[0]) if model.family.generate_kwargs else {}
    out = []
    for _ in range(steps):
        step = {}
        if model.family.positions is not None and "mm_token_type_ids" not in extra and model.family.name != \
                "qwen2_5_omni_thinker":
            mm = torch.zeros_like(ids, dtype=torch.int32)
            for value, m in ((1, "image"), (2, "video")):
                if m in model.media_token_ids:
                    mm[ids == model.media_token_ids[m]] = value
            step["mm_token_type_ids"] = mm
        if model.family.bidirectional:
            step["token_type_ids"] = torch.isin(ids, torch.tensor(model.bidirectional_ids)).long()
        logits = hf(input_ids=ids, attention_mask=torch.ones_like(ids), **media, **extra, **step).logits[0, -1]
        nxt = int(logits.argmax())
        if nxt in stop_ids(model):
            break
        out.append(nxt)
        ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
    return out


@pytest.mark.parametrize("family,modality", CASES)
def test_generate_equals_greedy_full_forwards(tiny_family, family, modality):
    model = policy(tiny_family, family).eval()
    sample = first_sample(model, modality)
    ready = prepare(model, sample)
    with torch.no_grad():
        expected = greedy_by_full_forwards(model, ready, 5)
    assert len(expected) == 5  # the tiny models stop on no end token within 5 steps: a real comparison
    (ours,) = generate(model, [sample], max_new_tokens=5, prepared=[ready])
    assert ours["tokens"] == len(expected)
    assert ours["response"] == model.tokenizer.decode(expected, skip_special_tokens=True)


def test_prompts_needing_different_family_arguments_generate_apart(tiny_family):
    """One batch of an image prompt and a video-with-soundtrack prompt (Qwen2.5-Omni's use_audio_in_video differs):
    each answer equals the one it gets alone."""
    model = policy(tiny_family, "qwen2_5_omni_thinker").eval()
    samples = [first_sample(model, "image"), first_sample(model, "audio_visual")]
    together = generate(model, samples, max_new_tokens=4)
    alone = [generate(model, [s], max_new_tokens=4)[0] for s in samples]
    assert [a["response"] for a in together] == [a["response"] for a in alone]
