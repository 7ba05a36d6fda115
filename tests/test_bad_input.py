"""Corrupt samples are skipped, counted and reported by key; no other sample's label moves; bad
configuration fails at start-up naming the key or file."""
import tarfile

import pytest

from anyalign.__main__ import main
from anyalign.data import PreferenceDataModule

from conftest import ROOT, jpeg_bytes, pair, write_shard


def _mp4() -> bytes:
    with tarfile.open(ROOT / "assets" / "data" / "video" / "val-000.tar") as tar:
        m = next(m for m in tar.getmembers() if m.name.endswith(".mp4"))
        return tar.extractfile(m).read()


def mixed_shard(tmp_path, video=False):
    """10 good pairs whose answers name their key, with bad samples interleaved."""
    mark, ext = ("<video>", "mp4") if video else ("<image>", "jpg")
    media = (lambda i: _mp4()) if video else jpeg_bytes
    good = [pair(f"good-{i}", f"{mark}\nWhat is it?", f"Answer {i}.", f"Wrong {i}.", **{ext: media(i)})
            for i in range(10)]
    nochosen = pair("bad-nochosen", f"{mark}\nWhat?", **{ext: media(2)})
    del nochosen["json"]["chosen"]
    bad = [pair("bad-undecodable", f"{mark}\nWhat?", **{ext: b"these bytes are not media"}),
           nochosen,
           pair("bad-twomarkers", f"{mark} and {mark}?", **{ext: media(1)}),
           pair("bad-nomedia", f"{mark}\nWhat?")]
    if video:
        bad.append(pair("bad-truncmp4", "<video>\nWhat?", mp4=_mp4()[:300]))
    samples = []
    for i, g in enumerate(good):
        samples.append(g)
        if i < len(bad):
            samples.append(bad[i])
    return write_shard(tmp_path / "mixed.tar", samples)


@pytest.mark.parametrize("video", [False, True])
def test_bad_samples_skipped_counted_labels_kept(tmp_path, tiny_lm, tiny_vit, video):
    from anyalign.model import MultimodalLM
    from modalities import ImageAdapter, VideoAdapter
    adapter = VideoAdapter(encoder=tiny_vit, num_frames=4) if video else ImageAdapter(encoder=tiny_vit)
    model = MultimodalLM(tiny_lm, {"video" if video else "image": adapter})
    dm = PreferenceDataModule(mixed_shard(tmp_path, video), batch_size=4, num_workers=0)
    dm.bind(model)
    good, skipped = [], []
    for batch in dm.train_dataloader():
        skipped += batch["skipped"]
        for i, key in enumerate(batch["keys"]):
            row = batch["input_ids"][i][batch["target_seq"][i] == batch["index"]["chosen"][i]]
            good.append((key, model.tokenizer.decode(row.tolist())))
    assert sorted(k for k, _ in good) == sorted(f"good-{i}" for i in range(10))
    for key, text in good:
        assert text.startswith(f"Answer {key.split('-')[1]}.")
    reasons = {key: reason for _, key, reason in skipped}
    expected = {"bad-undecodable", "bad-nochosen", "bad-twomarkers", "bad-nomedia"} | ({"bad-truncmp4"} if video else set())
    assert set(reasons) == expected
    assert "chosen" in reasons["bad-nochosen"]
    assert "placeholder" in reasons["bad-twomarkers"] and "placeholder" in reasons["bad-nomedia"]
    assert "decode" in reasons["bad-undecodable"] or "open" in reasons["bad-undecodable"]


def test_training_goes_on_and_reports(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    shard = mixed_shard(tmp_path)
    main(["fit", "--config", "configs/image_dpo.yaml", "--data.train_shards", shard, "--data.val_shards", "null",
          "--trainer.max_steps", "6", "--trainer.enable_progress_bar", "false", "--data.batch_size", "4",
          "--trainer.num_sanity_val_steps", "0", "--trainer.default_root_dir", str(tmp_path / "run"),
          "--data.num_workers", "0"])
    out = capsys.readouterr().out
    assert "bad samples skipped: 4" in out or "bad samples skipped: 8" in out  # per epoch, 6 steps = 2 epochs
    assert "bad-nochosen" in out and "mixed.tar" in out


@pytest.mark.parametrize("override, message", [
    (["--model.lm", "assets/no-such-model"], "assets/no-such-model"),
    (["--data.train_shards", "assets/data/image/nope-{000..001}.tar"], "nope-000.tar"),
    (["--model.adapters", '{"image": {"class_path": "modalities.NoSuchAdapter"}}'], "NoSuchAdapter"),
    (["--model.losses", '[{"name": "dpo_typo"}]'], "dpo_typo"),
    (["--data.layout", "zigzag"], "zigzag"),
])
def test_bad_config_fails_at_startup_naming_it(override, message, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(ROOT)
    with pytest.raises((SystemExit, ValueError, FileNotFoundError)) as err:
        main(["fit", "--config", "configs/image_dpo.yaml", "--trainer.default_root_dir", str(tmp_path), *override])
    text = str(err.value) + capsys.readouterr().err
    assert message in text
