"""An assembled model that is exactly a LLaVA (a SigLIP/CLIP layer's hidden states, no pooling, a 2-layer GELU MLP,
any causal LM) is also exported as ``LlavaForConditionalGeneration`` + ``LlavaProcessor``: it reloads with no missing
or unexpected keys, its forward gives anyalign's log-probs on the same pixels and ids, and its processor writes the
same prompt ids."""
from __future__ import annotations

import json

import torch

from anyalign.data.module import PreferenceDataModule
from anyalign.export import llava_unsupported_reason, save_aligned
from anyalign.model import MultimodalLM
from modalities import ImageAdapter

from conftest import ASSETS, ROOT


def model(**kw) -> MultimodalLM:
    torch.manual_seed(0)
    return MultimodalLM(str(ASSETS / "tiny-lm"), {"image": ImageAdapter(encoder=str(ASSETS / "tiny-siglip"), **kw)})


def test_llava_export_equals_the_assembled_model(tmp_path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration
    policy = model(feature_layer=-2).eval()
    out = save_aligned(policy, tmp_path / "export")
    meta = json.loads((out / "anyalign.json").read_text())
    assert meta["llava"] == "llava"
    llava, info = LlavaForConditionalGeneration.from_pretrained(out / "llava", output_loading_info=True)
    assert not any(info.values()), info
    processor = AutoProcessor.from_pretrained(out / "llava")

    dm = PreferenceDataModule(str(ROOT / "assets/data/image/val-000.tar"), batch_size=1, num_workers=0,
                              shuffle_buffer=1, max_length=512)
    dm.bind(policy)
    batch = next(iter(dm._loader(dm.train_urls, 1, False, None)))
    with torch.no_grad():
        ours = policy(batch).logps
    ids, roles = batch["input_ids"][0], batch["roles"][0]
    pixels = batch["media"]["image"]
    prompt = ids[roles == 0]
    theirs = []
    for k in (1, 2):
        response = ids[roles == k]
        full = torch.cat([prompt, response])[None]
        with torch.no_grad():
            logits = llava(input_ids=full, pixel_values=pixels, attention_mask=torch.ones_like(full)).logits[0]
        theirs.append(logits[len(prompt) - 1:-1].log_softmax(-1).gather(-1, response[:, None]).sum())
    torch.testing.assert_close(ours, torch.stack(theirs), atol=1e-4, rtol=0)

    # the LLaVA processor: the same prompt ids; pixels as anyalign's up to resampling
    from anyalign.data.pipeline import read_shards
    raw = next(read_shards(iter([str(ROOT / "assets/data/image/val-000.tar")])))
    image = policy.adapters["image"].decode(raw["jpg"], "jpg")
    record = json.loads(raw["json"])
    text = policy.tokenizer.apply_chat_template([{"role": "user", "content": record["prompt"]}], tokenize=False,
                                                add_generation_prompt=True)
    enc = processor(text=[text], images=[image], return_tensors="pt", add_special_tokens=False)
    assert enc["input_ids"][0].tolist() == prompt.tolist()
    assert (enc["pixel_values"] - pixels).abs().mean() < 0.02


def test_no_llava_export_when_the_model_is_not_one(tmp_path):
    policy = model()  # the default: the encoder's output with its final layer norm, which LLaVA does not read
    assert "feature_layer" in llava_unsupported_reason(policy)
    out = save_aligned(policy, tmp_path / "export")
    assert "llava" not in json.loads((out / "anyalign.json").read_text()) and not (out / "llava").exists()
    assert "spatial pooling" in llava_unsupported_reason(model(feature_layer=-1, spatial_pool=2))
