"""The shard inspector reports what training would see (the same bad keys and reasons, token lengths with
media expanded), renders a sample, and the opt-in pre-flight gate stops a fit on mostly broken data."""
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from anyalign.__main__ import main as train
from anyalign.data import PreferenceDataModule
from anyalign import inspector as insp
from modalities.preview import FRAME, THUMB
from anyalign.data import scan
from anyalign.data.template import PreferenceTokenizer

from conftest import ROOT, jpeg_bytes, pair, write_shard
from test_corrupt_suite import demo_mp4s, stable, tiny_audio_encoder, tone, wav_bytes


@pytest.fixture(scope="module")
def model(tiny_lm, tiny_vit, tmp_path_factory):
    from anyalign.model import MultimodalLM
    from modalities import AudioAdapter, ImageAdapter, VideoAdapter
    torch.manual_seed(0)
    return MultimodalLM(tiny_lm, {"image": ImageAdapter(encoder=tiny_vit),
                                  "video": VideoAdapter(encoder=tiny_vit, num_frames=4),
                                  "audio": AudioAdapter(encoder=tiny_audio_encoder(tmp_path_factory), max_seconds=1.0)})


def bound(model, shards, **kw) -> PreferenceDataModule:
    dm = PreferenceDataModule(shards, num_workers=0, max_length=256, **kw)
    dm.bind(model)
    return dm


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inspect")
    unpaired = {"__key__": "unpaired", "json": {"prompt": "<image>\nNice?", "completion": "Yes.", "label": True},
                "jpg": jpeg_bytes(5)}
    first = [pair("one-image", jpg=jpeg_bytes(1)),
             pair("two-images", "<image> and <image>: same?", **{"0.jpg": jpeg_bytes(2), "1.jpg": jpeg_bytes(3)}),
             {"__key__": "bad-json", "json": b"{not json", "jpg": jpeg_bytes(4)},
             pair("video", "<video>\nWhat happens?", "It moves.", "It stays.", mp4=demo_mp4s()[0]),
             pair("text-only", "Say hi.", "Hi.", "No.")]
    second = [pair("bad-image", jpg=b"not an image at all"),
              pair("with-notes", jpg=jpeg_bytes(6), txt=b"ignored"),
              pair("audio", "<audio>\nWhat is said?", "A tone.", "Silence.", wav=wav_bytes(tone())),
              unpaired]
    return [write_shard(tmp / "a.tar", first), write_shard(tmp / "b.tar", second)]


def test_scan_reports_what_training_sees(model, shards):
    dm = bound(model, shards)
    report = scan.scan(dm.train_urls, scan.example_stages(dm), 0, dict(model.adapters.items()))
    assert (report["samples"], report["good"], report["bad"], report["paired"], report["unpaired"]) == (9, 7, 2, 6, 1)
    assert report["members"]["jpg"] == {"count": 7, "read_by": ["image"]}
    assert report["members"]["txt"] == {"count": 1, "read_by": []}
    assert report["members"]["mp4"]["read_by"][0] == "video" and report["members"]["json"]["count"] == 9
    assert report["media_items"] == {"image": {"1": 3, "2": 1}, "video": {"1": 1}, "audio": {"1": 1}}

    # the same bad keys and reasons as the training loader reports
    skipped, trained = {}, []
    for batch in bound(model, shards, batch_size=1).train_dataloader():  # one kind (paired, unpaired) a batch
        skipped |= {key: stable(reason) for _, key, reason in batch["skipped"]}
        trained += batch["keys"]
    # training (paired losses) also skips the unpaired sample by kind; the inspector counts kinds instead
    assert skipped.pop("unpaired") == "unpaired sample, but the loss terms train on paired samples"
    assert {b["key"]: stable(b["reason"]) for b in report["bad_samples"]} == skipped
    assert set(skipped) == {"bad-json", "bad-image"} and len(trained) == report["paired"]

    # token lengths, counted independently: the rendered prompt with each placeholder taking its media's tokens
    tok = PreferenceTokenizer(model.tokenizer, model.media_token_ids, 256)
    per_key = {r["key"]: r["tokens"] for r in scan.summarize(dm.train_urls, scan.example_stages(dm)) if "tokens" in r}
    image_tokens = model.adapters["image"].tower.tokens_per_image
    for key, prompt, extra in [("one-image", "<image>\nWhat is this?", image_tokens - 1),
                               ("two-images", "<image> and <image>: same?", 2 * (image_tokens - 1)),
                               ("video", "<video>\nWhat happens?", 4 * image_tokens - 1), ("text-only", "Say hi.", 0)]:
        messages = [{"role": "user", "content": prompt}]
        assert per_key[key]["prompt"] == len(tok._ids(tok.render(messages))) + extra, key
    hi = [{"role": "user", "content": "Say hi."}]
    chosen = tok.render(hi, "Hi.")[len(tok.render(hi)):]
    assert per_key["text-only"]["chosen"] == len(tok._ids(chosen))
    prompts = sorted(t["prompt"] for t in per_key.values())
    assert report["tokens"]["prompt"] == {"min": prompts[0], "median": float(np.median(prompts)),
                                          "p95": prompts[-1], "max": prompts[-1]}
    assert report["tokens"]["completion"]["min"] > 0 and "rejected" in report["tokens"]
    assert scan._dist(list(range(1, 101))) == {"min": 1, "median": 50.5, "p95": 95, "max": 100}


def test_cli_text_json_and_render(shards, tiny_lm, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # the default adapters' encoder: assets/tiny-siglip
    insp.main([*shards, "--lm", tiny_lm, "--json", "--workers", "2"])
    report = json.loads(capsys.readouterr().out)
    # --lm has image and video adapters only: the wav is never read, and "<audio>" is plain prompt text
    assert (report["good"], report["bad"], report["members"]["wav"]["read_by"]) == (7, 2, [])
    assert "audio" not in report["media_items"] and report["media_items"]["video"] == {"1": 1}
    insp.main([shards[0], "--lm", tiny_lm])
    text = capsys.readouterr().out
    assert "5 samples: 4 good, 1 bad" in text and "bad-json" in text and "invalid json" in text
    out = tmp_path / "one.png"
    insp.main([shards[0], "--lm", tiny_lm, "--render", "one-image", "--out", str(out)])
    assert f"wrote {out}" in capsys.readouterr().out and Image.open(out).width == insp.WIDTH


def test_cli_with_a_config_uses_its_model(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    insp.main(["assets/data/video/val-000.tar", "--config", "configs/video_dpo.yaml", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert (report["samples"], report["bad"], report["media_items"]) == (48, 0, {"video": {"1": 48}})
    # video_dpo.yaml: 8 frames x 4 tokens (spatial_pool 2); the default adapter would give 8 x 16
    assert 32 < report["tokens"]["prompt"]["min"] and report["tokens"]["prompt"]["max"] < 100


def red_pixels(img: Image.Image) -> int:
    a = np.asarray(img.convert("RGB")).astype(int)
    return int(((a[..., 0] > 200) & (a[..., 1] < 60) & (a[..., 2] < 60)).sum())


def test_render_draws_text_images_frames_and_spectrogram(model, tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (48, 48), (255, 0, 0)).save(buf, "PNG")
    shard = write_shard(tmp_path / "r.tar", [
        pair("all", "<image> <video> <audio> what?", png=buf.getvalue(), mp4=demo_mp4s()[1], wav=wav_bytes(tone())),
        pair("broken", jpg=b"\xff\xd8 broken")])
    dm = bound(model, [shard])
    img = Image.open(insp.render(dm, "all", str(tmp_path / "all.png")))
    assert img.width == insp.WIDTH and red_pixels(img) >= THUMB ** 2 * 0.9  # the image, scaled up

    sheet = insp._media(model.adapters["video"], demo_mp4s()[1], "mp4")
    assert sheet.width == 4 * (FRAME + 4)  # num_frames=4, one row

    spec = np.asarray(insp._media(model.adapters["audio"], wav_bytes(tone(freq=1000.0)), "wav")).astype(int)
    rows = spec.mean(axis=(1, 2))
    assert rows.max() - rows.min() > 60  # a 1 kHz tone is one bright band, not a flat image
    band = int(rows.argmax())
    assert spec.shape[0] * 0.3 < band < spec.shape[0] * 0.9  # 1 kHz sits in the lower half of a 0-8 kHz mel axis

    bad = Image.open(insp.render(dm, "broken", str(tmp_path / "broken.png")))
    assert red_pixels(bad) > 20  # the reason, in red
    with pytest.raises(KeyError, match="nope"):
        insp.render(dm, "nope", str(tmp_path / "x.png"))


def ten(tmp_path, bad: int) -> list[str]:
    samples = [pair(f"good-{i}", jpg=jpeg_bytes(i)) for i in range(10 - bad)]
    samples += [pair(f"bad-{i}", jpg=b"garbage") for i in range(bad)]
    return [write_shard(tmp_path / "p0.tar", samples[0::2]), write_shard(tmp_path / "p1.tar", samples[1::2])]


def test_preflight_fails_above_the_limit_naming_keys(model, tmp_path):
    dm = bound(model, ten(tmp_path, 2))
    stages = scan.example_stages(dm)
    with pytest.raises(ValueError) as err:
        scan.preflight(dm.train_urls, stages, 0.1)
    msg = str(err.value)
    assert "data.preflight_max_bad_fraction=0.1" in msg and "2 of 10" in msg and "0.2000" in msg
    assert "bad-0" in msg and "bad-1" in msg and "cannot decode image" in msg and "good-" not in msg
    report = scan.preflight(dm.train_urls, stages, 0.2)  # at the limit passes
    assert report["bad"] == 2
    def same_order(r):
        return {**r, "bad_samples": sorted((b["key"], stable(b["reason"])) for b in r["bad_samples"])}
    assert same_order(scan.scan(dm.train_urls, stages, num_workers=2)) == same_order(report)  # two workers


def test_datamodule_runs_preflight_once_on_fit_only(model, tmp_path, monkeypatch):
    shards = ten(tmp_path, 3)
    calls = []
    import anyalign.data.module as data_module
    real = data_module.preflight
    monkeypatch.setattr(data_module, "preflight", lambda *a, **k: calls.append(a) or real(*a, **k))
    bound(model, shards).setup("fit")  # None: no scan
    assert calls == []
    dm = bound(model, shards, preflight_max_bad_fraction=0.5)
    dm.setup("validate")
    assert calls == []
    dm.setup("fit")
    dm.setup("fit")
    assert len(calls) == 1 and dm.preflight_report["bad"] == 3
    with pytest.raises(ValueError, match="bad-2"):
        bound(model, shards, preflight_max_bad_fraction=0.25).setup("fit")
    with pytest.raises(ValueError, match="data.preflight_max_bad_fraction must be in"):
        PreferenceDataModule(shards, preflight_max_bad_fraction=1.5)


def test_fit_stops_before_training_on_bad_data(tmp_path, monkeypatch):
    from anyalign.module import AlignModule
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(AlignModule, "training_step", lambda *a: pytest.fail("trained despite the pre-flight"))
    shards = ten(tmp_path, 3)
    with pytest.raises(ValueError, match=r"(?s)data.preflight_max_bad_fraction=0.1: 3 of 10.*bad-0"):
        train(["fit", "--config", "configs/image_dpo.yaml", "--data.train_shards", json.dumps(shards),
               "--data.val_shards", "null", "--data.preflight_max_bad_fraction", "0.1", "--data.num_workers", "0",
               "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.num_sanity_val_steps", "0"])
