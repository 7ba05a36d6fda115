"""``convert jsonl``: the nested media forms users write, unknown keys named when a row is skipped, fields kept,
the formats the adapters read (gif/bmp/tiff/MPO images, m4a/opus audio), and ``--shards N`` with the warning
about too few shards."""
from __future__ import annotations

import base64
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anyalign.convert import convert, reasons as F
from anyalign.convert.cli import main

from convert_fixtures import jpeg, mp4, png, wav, write_jsonl


def _shards(out: Path) -> dict[str, dict[str, bytes]]:
    samples = {}
    for path in sorted(out.glob("*.tar")):
        with tarfile.open(path) as tar:
            for m in tar:
                key, _, field = m.name.partition(".")
                samples.setdefault(key, {})[field] = tar.extractfile(m).read()
    return samples


def _per_shard(out: Path) -> list[list[str]]:
    keys = []
    for path in sorted(out.glob("*.tar")):
        with tarfile.open(path) as tar:
            keys.append(list(dict.fromkeys(m.name.partition(".")[0] for m in tar)))
    return keys


def _details(summary: dict, reason: str) -> list[str]:
    return [e["detail"] for e in summary["skipped_by_reason"][reason]["examples"]]


@pytest.fixture()
def media(tmp_path) -> Path:
    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    (root / "vid").mkdir()
    (root / "aud").mkdir()
    for i in range(3):
        (root / "img" / f"a{i}.jpg").write_bytes(jpeg(i))
    (root / "img" / "p.png").write_bytes(png(1))
    (root / "vid" / "v.mp4").write_bytes(mp4())
    (root / "aud" / "a.wav").write_bytes(wav())
    return root


def _pair(key: str, prompt: str = "<image>\nWhat is it?", **media) -> dict:
    return {"id": key, "prompt": prompt, "chosen": "A cat.", "rejected": "A dog.", **media}


def test_nested_media_forms_are_accepted(tmp_path, media):
    rows = [
        _pair("media-dict", media={"image": ["img/a0.jpg"]}),
        _pair("media-dict-one", media={"image": "img/a1.jpg"}),
        _pair("media-dict-plural", media={"images": ["img/a2.jpg"]}),
        _pair("media-dict-path", media={"image": {"path": "img/p.png"}}),
        _pair("media-list", "<image> or <video>?",
              media=[{"type": "image", "path": "img/a0.jpg"}, {"type": "video", "video": "vid/v.mp4"}]),
        _pair("images", images=["img/a1.jpg"]),
        _pair("image", image="img/a2.jpg"),
        _pair("image-path", image_path="img/p.png"),
        _pair("av", "<video><audio>\nWhat is said?", media={"video": "vid/v.mp4", "audio": ["aud/a.wav"]}),
        _pair("two", "<image> and <image>", images=["img/a0.jpg"], media={"image": "img/p.png"}),
    ]
    write_jsonl(media / "d.jsonl", rows)
    s = convert("jsonl", str(media / "d.jsonl"), str(tmp_path / "out" / "s-%03d.tar"), log=None)
    assert s["skipped"] == 0, s["skipped_by_reason"]
    out = _shards(tmp_path / "out")
    assert out["media-dict"]["jpg"] == jpeg(0) and out["media-dict-one"]["jpg"] == jpeg(1)
    assert out["media-dict-plural"]["jpg"] == jpeg(2) and out["media-dict-path"]["png"] == png(1)
    assert out["media-list"]["jpg"] == jpeg(0) and out["media-list"]["mp4"] == mp4()
    assert out["images"]["jpg"] == jpeg(1) and out["image"]["jpg"] == jpeg(2) and out["image-path"]["png"] == png(1)
    assert out["av"]["mp4"] == mp4() and out["av"]["wav"] == wav()
    assert out["two"]["0.jpg"] == jpeg(0) and out["two"]["1.png"] == png(1)  # the lists first, then media
    assert json.loads(out["media-dict"]["json"]) == {"prompt": "<image>\nWhat is it?", "chosen": "A cat.",
                                                    "rejected": "A dog."}


def test_unknown_keys_are_named_when_a_row_is_skipped(tmp_path, media):
    rows = [
        _pair("misspelt", img="img/a0.jpg"),                       # its media are lost: markers do not match
        _pair("question", prompt=None, question="<image> What?", image="img/a0.jpg"),
        _pair("metadata", images=["img/a0.jpg"], source="web", score=0.9),  # unknown keys alone: written
        _pair("bad-part", media=[{"path": "img/a0.jpg"}]),
    ]
    write_jsonl(media / "d.jsonl", rows)
    s = convert("jsonl", str(media / "d.jsonl"), str(tmp_path / "out" / "s-%03d.tar"), log=None)
    assert s["written"] == 1 and set(_shards(tmp_path / "out")) == {"metadata"}
    (mismatch,) = _details(s, F.MISMATCH)
    assert mismatch.startswith("1 <image> marker(s) but 0 image item(s); unknown key(s) 'img' (media go under")
    (no_prompt,) = _details(s, F.MISSING_PROMPT)
    assert "unknown key(s) 'question'" in no_prompt
    (malformed,) = _details(s, F.MALFORMED)
    assert "media[0] must be an object with a 'type'" in malformed


def test_weights_answer_and_choices_are_kept(tmp_path, media):
    weighted = _pair("w", images=["img/a0.jpg"], chosen_weights=[{"start": 2, "end": 5, "weight": 3.0}],
                     answer="cat", choices=["A cat.", "A dog."])
    bad = _pair("bad-span", images=["img/a0.jpg"], rejected_weights=[{"start": 0, "end": 99, "weight": 1.0}])
    write_jsonl(media / "d.jsonl", [weighted, bad])
    s = convert("jsonl", str(media / "d.jsonl"), str(tmp_path / "out" / "s-%03d.tar"), log=None)
    rec = json.loads(_shards(tmp_path / "out")["w"]["json"])
    assert rec["chosen_weights"] == [{"start": 2, "end": 5, "weight": 3.0}]
    assert rec["answer"] == "cat" and rec["choices"] == ["A cat.", "A dog."]
    assert "rejected_weights[0]" in _details(s, F.MALFORMED)[0]


def _image(fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    arr = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(arr).save(buf, fmt, **kw)
    return buf.getvalue()


def test_formats_the_adapters_read_are_written(tmp_path, media):
    from test_media_formats import M4A_TONE, WEBM_TONE, _opus_tone
    (media / "img" / "x.gif").write_bytes(_image("GIF"))
    (media / "img" / "x.bmp").write_bytes(_image("BMP"))
    (media / "img" / "x.tiff").write_bytes(_image("TIFF"))
    second = Image.new("RGB", (20, 30))
    (media / "img" / "phone.jpg").write_bytes(_image("MPO", save_all=True, append_images=[second]))
    assert Image.open(media / "img" / "phone.jpg").format == "MPO"
    (media / "aud" / "t.m4a").write_bytes(base64.b64decode(M4A_TONE))
    (media / "aud" / "t.opus").write_bytes(_opus_tone())
    (media / "aud" / "t.webm").write_bytes(base64.b64decode(WEBM_TONE))
    rows = [_pair(f"img-{n.replace('.', '-')}", image=f"img/{n}") for n in ("x.gif", "x.bmp", "x.tiff", "phone.jpg")]
    rows += [_pair(f"aud-{n.replace('.', '-')}", "<audio>\nWhat?", audio=f"aud/{n}")
             for n in ("t.m4a", "t.opus", "t.webm")]
    write_jsonl(media / "d.jsonl", rows)
    s = convert("jsonl", str(media / "d.jsonl"), str(tmp_path / "out" / "s-%03d.tar"), log=None)
    out = _shards(tmp_path / "out")
    assert set(out["img-x-gif"]) == {"json", "gif"} and set(out["img-x-bmp"]) == {"json", "bmp"}
    assert set(out["img-x-tiff"]) == {"json", "tif"}  # an image takes its format's first extension
    assert set(out["img-phone-jpg"]) == {"json", "jpg"}
    assert set(out["aud-t-m4a"]) == {"json", "m4a"} and set(out["aud-t-opus"]) == {"json", "opus"}
    # an audio-only WebM would be taken by the video adapter as a clip: refused, saying why and what to do
    (detail,) = _details(s, F.UNSUPPORTED)
    assert "t.webm: a Matroska/WebM file, which the audio adapter does not read as its own" in detail
    assert "re-encode" in detail
    # what was written decodes with the adapters' own decoders
    from modalities.audio_decode import read_audio
    from modalities.vision import decode_image
    for key in ("img-x-gif", "img-x-bmp", "img-x-tiff", "img-phone-jpg"):
        (ext,) = set(out[key]) - {"json"}
        assert decode_image(out[key][ext]).size == (30, 20)
    for key, ext in (("aud-t-m4a", "m4a"), ("aud-t-opus", "opus")):
        wave, rate = read_audio(out[key][ext], ext, 2.0, 16000)
        assert rate == 16000 and len(wave) > 0.3 * rate


def test_shards_spreads_samples_round_robin(tmp_path, media, capsys):
    rows = [_pair(f"s{i}", images=[f"img/a{i % 3}.jpg"]) for i in range(10)]
    write_jsonl(media / "d.jsonl", rows)
    out = tmp_path / "out"
    assert main(["jsonl", str(media / "d.jsonl"), str(out / "s-%02d.tar"), "--shards", "4"]) == 0
    text = capsys.readouterr().out
    assert "jsonl: 10 written to 4 shard(s), 0 skipped" in text and "warning" not in text
    assert _per_shard(out) == [["s0", "s4", "s8"], ["s1", "s5", "s9"], ["s2", "s6"], ["s3", "s7"]]
    assert sorted(p.name for p in out.iterdir()) == ["s-00.tar", "s-01.tar", "s-02.tar", "s-03.tar"]
    # fewer samples than shards: one shard per sample, no empty shard
    s = convert("jsonl", str(media / "d.jsonl"), str(tmp_path / "few" / "s-%02d.tar"), log=None, shards=16)
    assert len(s["shards"]) == 10 and all(len(k) == 1 for k in _per_shard(tmp_path / "few"))
    with pytest.raises(ValueError, match="--shards must be at least 1"):
        convert("jsonl", str(media / "d.jsonl"), str(tmp_path / "zero" / "s-%02d.tar"), log=None, shards=0)


def test_one_shard_is_warned_about(tmp_path, media, capsys):
    write_jsonl(media / "d.jsonl", [_pair(f"s{i}", images=["img/a0.jpg"]) for i in range(5)])
    assert main(["jsonl", str(media / "d.jsonl"), str(tmp_path / "out" / "s-%02d.tar")]) == 0
    text = capsys.readouterr().out
    assert "jsonl: 5 written to 1 shard(s)" in text
    assert ("warning: 5 sample(s) went into 1 shard: data workers x ranks need at least that many shards to all be "
            "busy") in text and "--shards N" in text
    s = convert("jsonl", str(media / "d.jsonl"), str(tmp_path / "two" / "s-%02d.tar"), log=None, maxcount=3)
    assert len(s["shards"]) == 2 and s["warnings"] == []


def test_help_documents_the_jsonl_schema(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for piece in ('"media": [{"type": "NAME", "path": path}, ...]', '"NAME_path": path or [paths]',
                  "--shards", "data workers x ranks", "the reason names the keys it did not read"):
        assert piece in text, piece
