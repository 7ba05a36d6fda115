"""The shared layout is exact for every shipped modality: on real demo samples (image, multi-image, video,
audio, video with its soundtrack), one row ``prompt | chosen | rejected`` gives the chosen and rejected
log-probs of two separate plain Hugging Face forwards (fp32, atol 1e-4), and the same gradients as the
duplicated layout (atol 1e-5)."""
import itertools

import pytest
import torch
from lightning.pytorch.cli import LightningCLI

from anyalign.data import PreferenceDataModule
from anyalign.data.collate import Collator
from anyalign.data.scan import example_stages
from anyalign.data.pipeline import Skipped, read_shards
from anyalign.module import AlignModule

from conftest import ROOT, separate_logp

CONFIGS = ["image_dpo", "multi_image_dpo", "video_dpo", "audio_dpo", "audio_visual_dpo"]


def _model_and_examples(config: str, n: int = 3):
    cli = LightningCLI(AlignModule, PreferenceDataModule, run=False, seed_everything_default=0,
                       parser_kwargs={"parser_mode": "omegaconf"},
                       args=["--config", str(ROOT / f"configs/{config}.yaml"), "--data.num_workers", "0"])
    module, data = cli.model, cli.datamodule
    data.bind(module.policy)
    src = read_shards(iter(data.val_urls))
    for stage in example_stages(data):
        src = stage(src)
    examples = list(itertools.islice((x for x in src if not isinstance(x, Skipped)), n))
    return module.policy.eval(), examples


@pytest.mark.parametrize("config", CONFIGS)
def test_shared_layout_exact_for_every_modality(config):
    model, exs = _model_and_examples(config)
    assert len(exs) == 3 and all(ex["media"] for ex in exs)
    if config == "audio_visual_dpo":
        assert all(set(ex["media"]) == {"video", "audio"} for ex in exs)
    adapters = dict(model.adapters.items())
    grads = {}
    for layout in ("shared", "concatenated"):
        batch = Collator(layout, model.tokenizer.pad_token_id, adapters)(exs)
        assert batch["input_ids"].shape[0] == (len(exs) if layout == "shared" else 2 * len(exs))
        model.zero_grad()
        out = model(batch)
        lp = {name: out.logps[batch["index"][name]] for name in ("chosen", "rejected")}
        if layout == "shared":
            with torch.no_grad():
                for name in ("chosen", "rejected"):
                    separate = torch.stack([separate_logp(model, ex, name) for ex in exs])
                    torch.testing.assert_close(lp[name], separate, atol=1e-4, rtol=1e-5)
        (lp["chosen"].sum() - 0.5 * lp["rejected"].sum()).backward()
        grads[layout] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert any(n.startswith("adapters.") for n in grads["shared"])  # the media path gets gradients too
    assert grads["shared"].keys() == grads["concatenated"].keys()
    for n, g in grads["shared"].items():
        torch.testing.assert_close(g, grads["concatenated"][n], atol=1e-5, rtol=1e-4, msg=n)
