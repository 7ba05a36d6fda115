"""The shared token stream: splice order, response-only scoring, layout equivalence, attention kernels."""
import pytest
import torch

from anyalign.data.collate import Collator
from anyalign.data.template import PreferenceTokenizer
from anyalign.model import MultimodalLM
from modalities import ModalityAdapter

from conftest import separate_logp


class Dummy(ModalityAdapter):
    """Item i of a batch -> tokens filled with (offset + i, token index): easy to recognise."""
    extensions = ()

    def __init__(self, placeholder: str, tokens: int, offset: float):
        super().__init__()
        self.placeholder_, self.tokens, self.offset = placeholder, tokens, offset

    @property
    def placeholder(self):
        return self.placeholder_

    def bind(self, hidden):
        self.hidden = hidden

    def num_tokens(self, item):
        return self.tokens

    def forward(self, batch):
        n = batch.shape[0]
        ids = batch[:, None, None].float() + self.offset
        pos = torch.arange(self.tokens, dtype=torch.float)[None, :, None] / 100
        return (ids + pos).expand(n, self.tokens, self.hidden)


def test_embeddings_land_at_placeholders_in_order(tiny_lm):
    model = MultimodalLM(tiny_lm, {"image": Dummy("<image>", 3, 1000.0), "audio": Dummy("<audio>", 2, 5000.0)})
    ti, ta = model.media_token_ids["image"], model.media_token_ids["audio"]
    text = model.tokenizer("hello there", add_special_tokens=False)["input_ids"]
    # row 0: text, image x3, text, audio x2, image x3 ; row 1: image x3, text
    row0 = text + [ti] * 3 + text + [ta] * 2 + [ti] * 3
    row1 = [ti] * 3 + text + text + text + [text[0]] * 2
    ids = torch.tensor([row0, row1[: len(row0)] + [text[0]] * (len(row0) - len(row1))])
    media = {"image": torch.tensor([0, 1, 2]), "audio": torch.tensor([7])}  # item values identify items
    emb = model.embed(ids, media)
    plain = model.lm.get_input_embeddings()(ids)
    img_pos = (ids == ti).nonzero().tolist()
    expected = [1000 + item + tok / 100 for item in range(3) for tok in range(3)]
    assert [round(emb[r, c, 0].item(), 4) for r, c in img_pos] == pytest.approx(expected)
    aud_pos = (ids == ta).nonzero().tolist()
    assert [round(emb[r, c, 0].item(), 4) for r, c in aud_pos] == pytest.approx([5007.0, 5007.01])
    other = (ids != ti) & (ids != ta)
    assert torch.equal(emb[other], plain[other])
    with pytest.raises(RuntimeError, match="placeholder positions"):
        model.embed(ids, {"image": torch.tensor([0, 1]), "audio": torch.tensor([7])})


def _examples(model, n=3):
    tok = PreferenceTokenizer(model.tokenizer, model.media_token_ids, 256)
    g = torch.Generator().manual_seed(0)
    answers = [("It shows a cat.", "It shows a rocket on a launch pad."), ("A cup.", "Galaxies, far away."),
               ("I see coins.", "No.")]
    out = []
    for i in range(n):
        c, r = answers[i % 3]
        ids = tok([{"role": "user", "content": "<image>\nWhat is in this picture?" + " Look." * i}],
                  {"chosen": c, "rejected": r}, {"image": [model.adapters["image"].num_tokens(None)]})
        out.append({"key": str(i), "media": {"image": [torch.randn(3, 32, 32, generator=g)]}, **ids})
    return out


def _logps(model, examples, layout):
    batch = Collator(layout, model.tokenizer.pad_token_id, dict(model.adapters.items()))(examples)
    out = model(batch)
    return {k: out.logps[ix] for k, ix in batch["index"].items()}, batch


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_shared_layout_equals_separate_forwards(tiny_lm, tiny_vit, attn):
    from modalities import ImageAdapter
    torch.manual_seed(0)
    model = MultimodalLM(tiny_lm, {"image": ImageAdapter(encoder=tiny_vit)}, attn_implementation=attn).eval()
    exs = _examples(model)
    shared, batch = _logps(model, exs, "shared")
    concat, _ = _logps(model, exs, "concatenated")
    assert batch["input_ids"].shape[0] == len(exs)  # one row per pair
    for name in ("chosen", "rejected"):
        separate = torch.stack([separate_logp(model, ex, name) for ex in exs])
        torch.testing.assert_close(shared[name], separate, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(concat[name], separate, atol=1e-4, rtol=1e-5)


def test_shared_layout_gradients_match_concatenated(image_model):
    exs = _examples(image_model)
    grads = {}
    for layout in ("shared", "concatenated"):
        image_model.zero_grad()
        lp, _ = _logps(image_model, exs, layout)
        (lp["chosen"].sum() - 0.5 * lp["rejected"].sum()).backward()
        grads[layout] = [p.grad.clone() for p in image_model.parameters() if p.grad is not None]
    for a, b in zip(grads["shared"], grads["concatenated"], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_only_response_tokens_are_scored(image_model):
    exs = _examples(image_model, 2)
    _, batch = _logps(image_model, exs, "shared")
    for row, ex in enumerate(exs):
        scored = batch["input_ids"][row][batch["target_seq"][row] >= 0].tolist()
        assert scored == ex["responses"]["chosen"] + ex["responses"]["rejected"]
        # the template decides the response span: it ends with the end-of-turn token
        text = image_model.tokenizer.decode(ex["responses"]["chosen"])
        assert text.startswith("It shows a cat." if row == 0 else "A cup.") and "<|im_end|>" in text
        assert "assistant" not in text  # the generation prompt belongs to the prompt
    # the first rejected token is predicted by the last prompt token, not by the last chosen token
    p = len(exs[0]["prompt"])
    first_rejected = p + len(exs[0]["responses"]["chosen"])
    assert batch["pred_pos"][0, first_rejected].item() == p - 1
    assert batch["position_ids"][0, first_rejected].item() == p
