"""Multi-image: items follow their numbers (not tar order) into the marker positions, and the cap skips a
sample before decoding it."""
import json

import torch

from anyalign.data.collate import Collator
from anyalign.data.pipeline import Skipped, decode, tokenize
from anyalign.data.template import PreferenceTokenizer
from anyalign.model import MultimodalLM
from modalities import ADAPTERS, AudioAdapter, ImageAdapter, MultiImageAdapter, get_adapter_class

from conftest import jpeg_bytes


def _raw(key: str, prompt: str, **images) -> dict:
    rec = {"prompt": prompt, "chosen": "The second one.", "rejected": "The first one."}
    return {"__key__": key, "__url__": "mem", "json": json.dumps(rec).encode(), **images}


def test_swapping_two_images_swaps_their_embeddings(tiny_lm, tiny_vit):
    torch.manual_seed(0)
    model = MultimodalLM(tiny_lm, {"image": MultiImageAdapter(encoder=tiny_vit)}).eval()
    a, b, c = jpeg_bytes(1), jpeg_bytes(2), jpeg_bytes(3)
    prompt = "Compare <image> with <image> and <image>.\nWhich is second?"
    # members deliberately out of order: item numbers, not tar order, decide
    samples = [_raw("abc", prompt, **{"2.jpg": c, "1.jpg": b, "0.jpg": a}),
               _raw("bac", prompt, **{"0.jpg": b, "2.jpg": c, "1.jpg": a})]
    adapters = dict(model.adapters.items())
    tok = PreferenceTokenizer(model.tokenizer, model.media_token_ids, 512)
    examples = list(tokenize(decode(iter(samples), adapters), tok, adapters))
    batch = Collator("shared", model.tokenizer.pad_token_id, adapters)(examples)
    with torch.no_grad():
        emb = model.embed(batch["input_ids"], batch["media"])
    n = adapters["image"].num_tokens(None)
    blocks = []
    for row in range(2):
        pos = (batch["input_ids"][row] == model.media_token_ids["image"]).nonzero().flatten()
        assert len(pos) == 3 * n
        blocks.append(emb[row, pos].view(3, n, -1))
    abc, bac = blocks
    torch.testing.assert_close(abc[0], bac[1])
    torch.testing.assert_close(abc[1], bac[0])
    torch.testing.assert_close(abc[2], bac[2])
    assert not torch.allclose(abc[0], abc[1], atol=1e-3)  # the images really differ


def test_max_images_skips_with_a_clear_reason(tiny_vit):
    adapter = MultiImageAdapter(encoder=tiny_vit, max_images=2)
    decoded = []
    adapter.decode = lambda data, ext: decoded.append(ext) or ImageAdapter.decode(adapter, data, ext)
    samples = [_raw("three", "<image> <image> <image>?", **{f"{i}.jpg": jpeg_bytes(i) for i in range(3)}),
               _raw("two", "<image> <image>?", **{f"{i}.png": jpeg_bytes(i) for i in range(2)}),
               _raw("one", "<image>?", jpg=jpeg_bytes(5))]
    out = {x.key if isinstance(x, Skipped) else x["key"]: x for x in decode(iter(samples), {"image": adapter})}
    assert isinstance(out["three"], Skipped) and out["three"].reason == "sample has 3 images; max_images is 2"
    assert len(decoded) == 3  # the refused sample's images were never decoded: 2 + 1 from the others
    assert [t.shape for t in out["two"]["media"]["image"]] == [(3, 32, 32)] * 2
    assert len(out["one"]["media"]["image"]) == 1


def test_registry_knows_the_new_adapters():
    assert issubclass(MultiImageAdapter, ImageAdapter)  # the image adapter's code, not a copy
    assert {"shuffle_order", "swap_one", "drop_one"} <= set(MultiImageAdapter.operators)
    assert get_adapter_class("multi_image") is MultiImageAdapter
    assert get_adapter_class("audio") is AudioAdapter
    assert {"image", "multi_image", "video", "audio"} <= set(ADAPTERS)


def test_init_args_pass_through_to_the_image_adapter_and_survive_export(tiny_lm, tiny_vit, tmp_path):
    """``MultiImageAdapter(max_images, **kwargs)``: the image adapter's options reach it, are recorded with
    ``max_images``, and the export rebuilds the adapter from them (the encoder moved into the export)."""
    from anyalign.export import load_aligned, save_aligned

    adapter = MultiImageAdapter(max_images=3, encoder=tiny_vit, spatial_pool=2, projector_depth=1)
    assert adapter.init_args == {"max_images": 3, "encoder": tiny_vit, "spatial_pool": 2, "projector_depth": 1}
    assert (adapter.max_images, adapter.tower.spatial_pool, adapter.projector_depth) == (3, 2, 1)
    torch.manual_seed(0)
    model = MultimodalLM(tiny_lm, {"image": adapter}).eval()
    out = save_aligned(model, tmp_path / "export")
    meta = json.loads((out / "anyalign.json").read_text())["adapters"]["image"]
    assert meta["class_path"] == "modalities.multi_image.MultiImageAdapter"
    assert meta["init_args"] == {**adapter.init_args, "encoder": "adapters/image/encoder"}
    reloaded = load_aligned(out).adapters["image"]
    assert type(reloaded) is MultiImageAdapter
    assert reloaded.init_args == {**adapter.init_args, "encoder": str(out / "adapters" / "image" / "encoder")}
    assert (reloaded.max_images, reloaded.tower.spatial_pool, reloaded.projector_depth) == (3, 2, 1)
    for name, value in adapter.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], value)
