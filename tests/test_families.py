"""Pretrained multimodal families (anyalign/families): anyalign's log-probs equal the family model's own forward on
the same inputs, in the shared layout and the concatenated one, and their gradients agree."""
from __future__ import annotations

import pytest
import torch

from anyalign.data.module import PreferenceDataModule
from anyalign.families import build_policy

# (family, demo modality): every modality each family takes, on the demo shards
CASES = [("llava", "image"), ("llava_onevision", "image"), ("llava_onevision", "video"), ("qwen2_vl", "image"),
         ("qwen2_vl", "video"), ("qwen2_5_vl", "image"), ("qwen2_5_vl", "video"), ("idefics3", "image"),
         ("smolvlm", "image"), ("gemma3", "image"), ("qwen2_audio", "audio")]


def policy(tiny_family, family: str, **kw):
    torch.manual_seed(0)
    return build_policy(tiny_family(family), {}, attn_implementation="sdpa", **kw)


def batches(model, modality: str, layout: str, batch_size: int, n: int = 1, negatives=None) -> list[dict]:
    dm = PreferenceDataModule(f"assets/data/{modality}/val-000.tar", batch_size=batch_size, num_workers=0,
                              layout=layout, max_length=4096, shuffle_buffer=1)
    dm.bind(model, negatives)
    out = []
    for batch in dm._loader(dm.train_urls, batch_size, False, negatives):
        assert not batch["skipped"], batch["skipped"]
        out.append(batch)
        if len(out) == n:
            break
    return out


def own_forward_logps(model, batch: dict) -> torch.Tensor:
    """The family model's own forward (``model(**inputs).logits``), one sequence (prompt + response) at a time,
    on one sample's batch, its log-probs gathered at the response tokens."""
    hf, ids, roles = model.hf, batch["input_ids"][0], batch["roles"][0]
    media = {k: v for d in batch["media"].values() for k, v in d.items()}
    prompt = ids[roles == 0]
    out = []
    for k in range(1, int(roles.max()) + 1):
        response = ids[roles == k]
        full = torch.cat([prompt, response])[None]
        extra = {}
        if model.family.positions is not None:  # Qwen: the processor's mm_token_type_ids, 0 on response tokens
            mm = torch.zeros_like(full, dtype=torch.int32)
            for value, m in ((1, "image"), (2, "video")):
                if m in model.media_token_ids:
                    mm[full == model.media_token_ids[m]] = value
            extra["mm_token_type_ids"] = mm
        if model.family.bidirectional:  # Gemma 3: the processor's token_type_ids
            extra["token_type_ids"] = (full == model.media_token_ids["image"]).long()
        logits = hf(input_ids=full, attention_mask=torch.ones_like(full), **media, **extra).logits[0].float()
        p = len(prompt)
        lp = logits[p - 1:-1].log_softmax(-1).gather(-1, response[:, None]).sum()
        out.append(lp)
    return torch.stack(out)


@pytest.mark.parametrize("family,modality", CASES)
def test_logps_equal_the_family_forward(tiny_family, family, modality):
    model = policy(tiny_family, family).eval()
    shared = batches(model, modality, "shared", 1)[0]
    with torch.no_grad():
        own = own_forward_logps(model, shared)  # chosen, rejected: the order of the shared row's slots
    for layout in ("shared", "concatenated"):
        batch = shared if layout == "shared" else batches(model, modality, layout, 1)[0]
        with torch.no_grad():
            out = model(batch).logps
        ours = torch.stack([out[batch["index"][name][0]] for name in ("chosen", "rejected")])
        torch.testing.assert_close(ours, own, atol=1e-4, rtol=0, msg=f"{family} {modality} {layout}")


@pytest.mark.parametrize("family,modality", CASES)
def test_gradients_equal_the_concatenated_layout(tiny_family, family, modality):
    grads = {}
    for layout in ("shared", "concatenated"):
        model = policy(tiny_family, family).eval()
        batch = batches(model, modality, layout, 2)[0]
        out = model(batch)
        chosen, rejected = batch["index"]["chosen"], batch["index"]["rejected"]
        loss = -torch.nn.functional.logsigmoid(0.1 * (out.logps[chosen] - out.logps[rejected])).mean()
        loss.backward()
        grads[layout] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert grads["shared"].keys() == grads["concatenated"].keys() and grads["shared"]
    for name, g in grads["shared"].items():
        # fp32 sums in another order: 1e-5 of the tensor's largest entry (Gemma 3's projector grads reach ~90)
        scale = max(1.0, float(g.abs().max()))
        torch.testing.assert_close(g, grads["concatenated"][name], atol=1e-5 * scale, rtol=0, msg=name)


@pytest.mark.parametrize("family,modality", CASES)
def test_the_media_reach_the_logps(tiny_family, family, modality):
    """The parity above means something only if the media matter: the chosen response scored under the item's
    reliance corruption (blank image, frozen clip, silence) gets other log-probs (every tiny weight is random;
    a matrix a family initialises to zero, Gemma 3's image projection, is not left at zero by the builder)."""
    model = policy(tiny_family, family).eval()
    op = model.adapters[modality].reliance_operator
    batch = batches(model, modality, "shared", 1, negatives={modality: [(op, 1.0, {})]})[0]
    with torch.no_grad():
        out = model(batch).logps
    clean, corrupt = out[batch["index"]["chosen"][0]], out[batch["index"]["chosen_corrupt"][0]]
    assert abs(float(clean - corrupt)) > 1e-4, (family, modality, float(clean), float(corrupt))
