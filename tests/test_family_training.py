"""A pretrained family trains with everything anyalign offers: freezing switches, LoRA, the reference strategies
(precomputed included), negatives on the raw media, and bad samples skipped with their reason."""
from __future__ import annotations

import glob
import json
import sys
from pathlib import Path

import pytest
import torch

from anyalign.__main__ import main
from anyalign.families import build_policy

from conftest import ROOT, jpeg_bytes, pair, write_shard
from test_families import batches, policy


def trainable(model) -> set[str]:
    parts = {"encoder": False, "projector": False, "lm": False, "lora": False}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if "lora_" in name:
            parts["lora"] = True
        elif ".visual.merger." in name or ".multi_modal_projector." in name:
            parts["projector"] = True
        elif ".visual." in name or ".vision_tower." in name:
            parts["encoder"] = True
        else:
            parts["lm"] = True
    return {k for k, v in parts.items() if v}


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])  # Qwen's projector sits inside its vision tower
def test_freeze_switches_each_part(tiny_family, family):
    assert trainable(policy(tiny_family, family)) == {"projector", "lm"}  # default: the encoder fixed
    assert trainable(policy(tiny_family, family, freeze=[])) == {"encoder", "projector", "lm"}
    assert trainable(policy(tiny_family, family, freeze=["encoder", "projector"])) == {"lm"}
    assert trainable(policy(tiny_family, family, freeze=["lm"])) == {"encoder", "projector"}
    assert trainable(policy(tiny_family, family, lora={"r": 4})) == {"projector", "lora"}
    assert trainable(policy(tiny_family, family, lora={"r": 4}, freeze=["encoder", "projector"])) == {"lora"}
    with pytest.raises(ValueError, match="model.freeze"):
        policy(tiny_family, family, freeze=["vision"])


def test_family_options_refused_for_an_assembled_model():
    with pytest.raises(ValueError, match="model.freeze applies to a pretrained multimodal checkpoint"):
        build_policy(str(ROOT / "assets/tiny-lm"), {}, freeze=["encoder"])


def test_negatives_corrupt_the_raw_media_and_keep_the_token_count(tiny_family):
    """The corrupted copy is processed again from corrupted pixels; a donor of another size is brought to the
    item's size first, so the prompt keeps its placeholder count (Qwen2-VL's token count follows the image size)."""
    model = policy(tiny_family, "qwen2_vl")
    spec = {"image": [("gaussian_blur", 1.0, {})]}
    batch = batches(model, "image", "shared", 2, negatives=spec)[0]
    clean = batch["index"]["chosen"]
    corrupt = batch["index"]["chosen_corrupt"]
    assert (corrupt >= 0).all() and not set(corrupt.tolist()) & set(clean.tolist())
    pv = batch["media"]["image"]["pixel_values"]
    grid = batch["media"]["image"]["image_grid_thw"]
    per_image = grid.prod(-1).tolist()
    chunks = pv.split(per_image)
    assert len(chunks) == 4  # two clean rows, two corrupted rows
    assert not torch.allclose(chunks[0], chunks[2])  # the blurred copy differs from the clean one
    torch.testing.assert_close(grid[:2], grid[2:])

    adapter = model.adapters["image"]
    from anyalign.families.media import ProcessedItems
    big = torch.rand(3, 80, 120) * 2 - 1
    small = torch.rand(3, 40, 48) * 2 - 1
    inputs, tokens = adapter.select(adapter.process([small]))
    swapped = adapter.corrupt(ProcessedItems([small], inputs, tokens), "swap", torch.Generator().manual_seed(0),
                              donor=[big])
    assert swapped.tokens == tokens and swapped[0].shape == small.shape
    torch.testing.assert_close(swapped.inputs["image_grid_thw"], inputs["image_grid_thw"])
    with torch.no_grad():
        out = model.eval()(batch)
    assert torch.isfinite(out.logps).all()


def test_bad_samples_are_skipped_with_their_reason(tiny_family, tmp_path):
    model = policy(tiny_family, "llava")
    shard = write_shard(tmp_path / "bad.tar", [
        pair("good", jpg=jpeg_bytes(0)),
        pair("corrupt", jpg=b"\xff\xd8\xff\xe0 not a jpeg"),
        pair("missing", prompt="<image><image>\nTwo?", jpg=jpeg_bytes(1)),
        pair("long", prompt="<image>\n" + "Describe it in detail. " * 60, jpg=jpeg_bytes(2)),
    ])
    from anyalign.data.module import PreferenceDataModule
    dm = PreferenceDataModule(shard, batch_size=4, num_workers=0, max_length=200, shuffle_buffer=1)
    dm.bind(model)
    (batch,) = list(dm._loader(dm.train_urls, 4, False, None))
    reasons = {key: reason for _, key, reason in batch["skipped"]}
    assert batch["keys"] == ["good"]
    assert set(reasons) == {"corrupt", "missing", "long"}
    assert reasons["corrupt"].startswith("cannot decode image"), reasons["corrupt"]
    assert "2 <image> marker(s) but the sample has 1 image item(s)" in reasons["missing"]
    assert "prompt takes" in reasons["long"] and "max_length is 200" in reasons["long"]


FIT = ["--trainer.precision", "32-true", "--trainer.max_steps", "4", "--trainer.val_check_interval", "4",
       "--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false", "--data.batch_size", "2",
       "--data.num_workers", "0", "--model.export_dir", "null", "--model.lr", "1e-3",
       "--data.train_shards", "assets/data/image/val-000.tar", "--data.val_shards", "assets/data/image/val-000.tar",
       "--trainer.limit_val_batches", "2"]


def _run(cmd, lm, root, *extra, log=None):
    callbacks = [{"class_path": "test_resume.Recorder", "init_args": {"path": str(log)}}] if log else []
    main([cmd, "--config", "configs/qwen2_vl_dpo.yaml", "--model.lm", lm, *FIT, "--trainer.default_root_dir",
          str(root), "--trainer.callbacks", json.dumps(callbacks), *extra])


def test_reference_strategies_agree(tiny_family, tmp_path, monkeypatch):
    """adapter_disabled (LoRA), frozen_copy and precomputed give the same reference log-probs on the same batches,
    and the same training, with mDPO's corrupted-media sequence precomputed too."""
    from test_resume import _read
    lm = tiny_family("qwen2_vl")
    monkeypatch.chdir(ROOT)
    cache = tmp_path / "cache"
    mdpo = ["--model.losses", json.dumps([{"name": "sigmoid", "beta": 0.1}, {"name": "conditional", "beta": 0.1}]),
            "--model.negatives", json.dumps({"image": [{"op": "gaussian_blur", "p": 0.5}, {"op": "null", "p": 0.5}]})]
    _run("precompute", lm, tmp_path / "pre", "--model.reference", "precomputed", "--model.reference_cache",
         str(cache), *mdpo)
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["sequences"] == ["chosen", "chosen_corrupt", "rejected"]
    logs = {}
    for ref in ("adapter_disabled", "frozen_copy", "precomputed"):
        log = tmp_path / f"{ref}.jsonl"
        _run("fit", lm, tmp_path / ref, "--model.reference", ref, "--model.reference_cache", str(cache), *mdpo, log=log)
        logs[ref] = _read(log)
    assert len(logs["precomputed"]) == 4
    for ref in ("frozen_copy", "precomputed"):
        assert [r["keys"] for r in logs[ref]] == [r["keys"] for r in logs["adapter_disabled"]]
        for a, b in zip(logs[ref], logs["adapter_disabled"]):
            assert a["loss"] == pytest.approx(b["loss"], abs=1e-4), ref


def test_ddp_fit_with_the_export_on(tiny_family, tmp_path):
    """Two CPU ranks (gloo) through python -m anyalign fit with configs/strategies/ddp.yaml and the default export:
    exit 0, both ranks trained their own samples, and the export reloads with the family's class."""
    from test_distributed import launch
    lm = tiny_family("qwen2_vl")
    cmd = [sys.executable, "-m", "anyalign", "fit", "--config", "configs/qwen2_vl_dpo.yaml", "--config",
           "configs/strategies/ddp.yaml", "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--model.lm", lm,
           *FIT[:-4], "--trainer.limit_val_batches", "1", "--data.val_shards", "assets/data/image/val-000.tar",
           "--data.train_shards", "assets/data/image/train-{000..001}.tar", "--trainer.default_root_dir",
           str(tmp_path / "run"), "--model.export_dir", "export",
           "--trainer.callbacks+=test_distributed.RankProbe", f"--trainer.callbacks.out_dir={tmp_path / 'probe'}"]
    ranks, proc = launch(cmd, tmp_path)
    assert len(ranks) == 2
    a, b = ({k for batch in r["train"] for k in batch["keys"]} for r in ranks)
    assert a and b and not a & b
    (export,) = glob.glob(f"{tmp_path}/run/**/export/config.json", recursive=True)
    import transformers
    _, info = transformers.Qwen2VLForConditionalGeneration.from_pretrained(export.rsplit("/", 1)[0],
                                                                           output_loading_info=True)
    assert not any(info.values())


def test_a_full_omni_checkpoint_loads_as_its_thinker(tiny_family, tmp_path):
    """model.lm naming a full Qwen2.5-Omni checkpoint (model_type qwen2_5_omni, weights under thinker.*) gives the
    same model as its thinker saved alone."""
    import shutil
    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration, Qwen2_5OmniThinkerConfig
    thinker = tiny_family("qwen2_5_omni_thinker")
    torch.manual_seed(0)
    config = Qwen2_5OmniConfig(thinker_config=Qwen2_5OmniThinkerConfig.from_pretrained(thinker).to_dict(),
                               enable_audio_output=False)
    full = Qwen2_5OmniForConditionalGeneration(config)
    import transformers
    full.thinker.load_state_dict(transformers.Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(thinker)
                                 .state_dict())
    full.save_pretrained(tmp_path / "full")
    for f in Path(thinker).iterdir():  # the processor files
        if not f.name.startswith(("config", "model", "generation")):
            shutil.copy(f, tmp_path / "full" / f.name)
    a, b = policy(tiny_family, "qwen2_5_omni_thinker").eval(), build_policy(str(tmp_path / "full"), {}).eval()
    assert type(b.hf).__name__ == "Qwen2_5OmniThinkerForConditionalGeneration"
    batch = batches(a, "audio_visual", "shared", 1)[0]
    with torch.no_grad():
        torch.testing.assert_close(a(batch).logps, b(batch).logps, atol=0, rtol=0)


def test_video_frames_are_placed_in_time(tiny_family):
    """Qwen2.5-VL's temporal positions count seconds: its processor is told each clip's sampled frame rate, so
    ``second_per_grid_ts`` is 2 frames / rate (not the 24 fps it assumes for frames without metadata), also for the
    corrupted copy of a clip."""
    import io

    import decord
    model = policy(tiny_family, "qwen2_5_vl", media={"video": {"num_frames": 8}})
    batch = batches(model, "video", "shared", 1, negatives={"video": [("reverse", 1.0, {})]})[0]
    from anyalign.data.pipeline import read_shards
    raw = next(read_shards(iter([str(ROOT / "assets/data/video/val-000.tar")])))
    vr = decord.VideoReader(io.BytesIO(raw["mp4"]))
    rate = 8 / (len(vr) / vr.get_avg_fps())
    seconds = batch["media"]["video"]["second_per_grid_ts"]
    assert seconds.shape == (2,)  # the clip and its reversed copy
    torch.testing.assert_close(seconds, torch.full((2,), 2 / rate))
    assert abs(2 / rate - 1 / 24) > 0.1  # what it would be without the rate
