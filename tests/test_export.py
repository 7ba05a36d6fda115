"""The export reloads (from Hugging Face format + safetensors) and gives the same log-probs."""
import json

import torch

from anyalign.data.collate import Collator
from anyalign.export import load_aligned, save_aligned

from test_model import _examples


def test_export_roundtrip_same_logps(image_model, tmp_path):
    with torch.no_grad():  # make the projector differ from a fresh init, as after training
        for p in image_model.adapters["image"].projector.parameters():
            p.add_(0.05)
    image_model.eval()
    exs = _examples(image_model)
    batch = Collator("shared", image_model.tokenizer.pad_token_id, dict(image_model.adapters.items()))(exs)
    before = image_model(batch).logps
    out = save_aligned(image_model, tmp_path / "export")
    assert (out / "lm" / "model.safetensors").is_file()
    assert (out / "adapters" / "image" / "adapter.safetensors").is_file()
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pt"))
    meta = json.loads((out / "anyalign.json").read_text())
    assert meta["adapters"]["image"]["init_args"]["encoder"] == "adapters/image/encoder"  # self-contained
    moved = tmp_path / "moved"
    out.rename(moved)  # the export does not depend on where it was written
    reloaded = load_aligned(moved)
    assert reloaded.media_token_ids == image_model.media_token_ids
    after = reloaded(batch).logps
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
