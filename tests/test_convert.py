"""Converters from other tools' layouts into shards: every fixture is built in tmp_path from each tool's
documented layout (the writers and media makers are in convert_fixtures.py), converted, then read back with
tarfile: text, markers, media bytes and the summary's counts, and every bad record skipped under its reason.

Media are real: Pillow JPEG/PNG, an H.264 mp4 from the demo shards, a WAV written with ``wave``."""
from __future__ import annotations

import io
import json
import runpy
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from anyalign.convert import reasons as F
from anyalign.convert.cli import main
from anyalign.convert.media import Media
from anyalign.convert.run import convert
from anyalign.data.pipeline import read_shards
from anyalign.data.schema import media_fields, parse_record
from modalities import ModalityAdapter
from modalities.vision import decode_image

from conftest import ROOT
from convert_fixtures import (GARBAGE, bad_paths, bomb_png, image_type, jpeg, mp4, needs_pyarrow, pa, png, pq,
                              save_to_disk, trl_rows, trl_schema, wav, write_jsonl, write_media_root)


@pytest.fixture()
def root(tmp_path):
    """A media root ``data/`` with good and bad media, a file outside it and a symlink pointing out."""
    return write_media_root(tmp_path)


# ---- reading back ----

def shards(out: Path) -> dict:
    """key -> {field: bytes} for every sample in every shard under ``out``."""
    samples = {}
    for path in sorted(out.glob("*.tar")):
        with tarfile.open(path) as tar:
            for m in tar:
                key, _, field = m.name.partition(".")
                assert key not in samples or field not in samples[key], m.name
                samples.setdefault(key, {})[field] = tar.extractfile(m).read()
    return samples


def record(sample: dict) -> dict:
    return json.loads(sample["json"].decode("utf-8"))


def assert_readable(out: Path) -> None:
    """The training pipeline's reader and parser accept every written sample."""
    for raw in read_shards(iter(str(p) for p in sorted(out.glob("*.tar")))):
        assert isinstance(raw, dict), raw
        rec = json.loads(raw["json"])
        if "completion" not in rec:
            parse_record(raw["json"])
        for exts in (("mp4", "webm", "mkv", "avi", "mov"), ("wav", "flac", "mp3", "ogg")):
            media_fields(raw, exts)
        for field, _ in media_fields(raw, ("jpg", "jpeg", "png", "webp")):
            decode_image(raw[field])  # what the image adapter will do with it


def reasons(summary: dict) -> dict:
    return {r: e["count"] for r, e in summary["skipped_by_reason"].items()}


def where(summary: dict, reason: str) -> list[str]:
    return [e["where"] for e in summary["skipped_by_reason"][reason]["examples"]]


CONVERTED: dict[str, list[str]] = {}  # format -> shards written by the tests above, trained on at the end


def run(fmt, source, out, **kw) -> dict:
    summary = convert(fmt, str(source), str(out / "train-%03d.tar"), log=None, **kw)
    CONVERTED.setdefault(fmt, []).extend(summary["shards"])
    return summary


# ---- jsonl (our schema, media as paths) ----

def test_jsonl(tmp_path, root):
    good = [
        {"id": "g.0", "prompt": "<image>\nWhat is it?", "chosen": "A cat.", "rejected": "A dog.",
         "images": ["img/a0.jpg"]},
        {"id": "g1", "prompt": [{"role": "user", "content": "<image> and <image>: same?"}], "system": "Be brief.",
         "chosen": "No.", "rejected": "Yes.", "images": ["img/a1.png", "img/a2.jpg"]},
        {"prompt": "<video>\nWhat happens?", "chosen": "It pans.", "rejected": "Nothing.", "video": "vid/v.mp4"},
        {"id": "g3", "prompt": "<audio>\nWhat sound?", "chosen": "A tone.", "rejected": "Speech.",
         "audios": ["aud/a.wav"]},
        {"id": "k4", "prompt": "<image>\nIs it red?", "completion": "Yes.", "label": True, "image": "img/a0.jpg"},
        {"id": "t5", "prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                                {"role": "user", "content": "Say bye."}], "chosen": "Bye.", "rejected": "No."},
    ]
    bad = [{"id": f"bad-{n}", "prompt": "<image>\nWhat?", "chosen": "a", "rejected": "b", "images": [p]}
           for n, (p, _) in bad_paths(tmp_path).items()]
    bad += [b'{"id": "broken", "prompt": "<image>", "chosen": ',
            b'{"id": "latin1", "prompt": "caf\xe9 <image>", "chosen": "a", "rejected": "b", "images": ["img/a0.jpg"]}',
            {"id": "two-markers", "prompt": "<image><image>", "chosen": "a", "rejected": "b", "images": ["img/a0.jpg"]},
            {"id": "g.0", "prompt": "<image>", "chosen": "a", "rejected": "b", "images": ["img/a2.jpg"]},
            {"id": "norejected", "prompt": "<image>", "chosen": "a", "images": ["img/a0.jpg"]},
            {"id": "marker-answer", "prompt": "<image>", "chosen": "<image> a", "rejected": "b",
             "images": ["img/a0.jpg"]}]
    write_jsonl(root / "train.jsonl", good + bad)
    s = run("jsonl", root / "train.jsonl", tmp_path / "out")

    assert s["written"] == 6 and s["skipped"] == len(bad)
    assert reasons(s) == {F.MISSING_MEDIA: 1, F.ESCAPE: 3, F.TOO_LARGE: 1, F.UNREADABLE: 1, F.BROKEN_JSON: 1,
                          F.NON_UTF8: 1, F.MISMATCH: 1, F.DUPLICATE: 1, F.MISSING_RESPONSE: 1,
                          F.MARKER_IN_RESPONSE: 1}
    assert where(s, F.ESCAPE) == ["train.jsonl line 8", "train.jsonl line 9", "train.jsonl line 10"]
    assert where(s, F.BROKEN_JSON) == ["train.jsonl line 13"] and where(s, F.NON_UTF8) == ["train.jsonl line 14"]
    assert s["skipped_by_reason"][F.DUPLICATE]["examples"][0]["key"] == "g_0"

    out = shards(tmp_path / "out")
    assert sorted(out) == ["g1", "g3", "g_0", "jsonl-00000002", "k4", "t5"]
    assert record(out["g_0"]) == {"prompt": "<image>\nWhat is it?", "chosen": "A cat.", "rejected": "A dog."}
    assert out["g_0"]["jpg"] == (root / "img/a0.jpg").read_bytes()
    assert record(out["g1"]) == {"prompt": "<image> and <image>: same?", "system": "Be brief.", "chosen": "No.",
                                 "rejected": "Yes."}
    assert out["g1"]["0.png"] == png(1) and out["g1"]["1.jpg"] == jpeg(2)
    assert out["jsonl-00000002"]["mp4"] == mp4() and out["g3"]["wav"] == wav()
    assert record(out["k4"]) == {"prompt": "<image>\nIs it red?", "completion": "Yes.", "label": True}
    assert record(out["t5"])["prompt"][1] == {"role": "assistant", "content": "Hello"} and set(out["t5"]) == {"json"}
    assert_readable(tmp_path / "out")


# ---- TRL: parquet and save_to_disk ----

@needs_pyarrow
@pytest.mark.parametrize("container", ["parquet", "save_to_disk"])
def test_trl(tmp_path, root, container):
    rows, expected_bad = trl_rows()
    table = pa.Table.from_pylist(rows, schema=trl_schema())
    if container == "parquet":
        source = root / "train.parquet"
        pq.write_table(table, source, row_group_size=4)
    else:
        source = root / "ds"
        save_to_disk(table, source)
    s = run("trl", source, tmp_path / "out", media_root=str(root))

    assert s["written"] == 3 and s["markers_added"] == 1
    assert reasons(s) == {r: 1 for r in expected_bad}
    rows_of = {r: int(w.rsplit(" ", 1)[1]) for r in expected_bad for w in where(s, r)}
    assert rows_of == {r: 3 + i for i, r in enumerate(expected_bad)}
    out = shards(tmp_path / "out")
    assert record(out["t0"]) == {"prompt": "<image>\nWhat is this?", "chosen": "A cat.", "rejected": "A dog."}
    assert out["t0"]["jpg"] == jpeg(0)
    assert record(out["t1"])["prompt"] == "<image>\n<image>\nCompare them."  # markers prepended, said in summary
    assert out["t1"]["0.jpg"] == jpeg(1) and out["t1"]["1.png"] == png(2)
    assert record(out["t2"]) == {"prompt": "<image>\nQ?", "system": "Be brief.", "chosen": "Yes.", "rejected": "No."}
    assert out["t2"]["jpg"] == (root / "img/a2.jpg").read_bytes()
    assert_readable(tmp_path / "out")


@needs_pyarrow
def test_trl_plain_text_implicit_prompt_and_unpaired(tmp_path):
    pq.write_table(pa.table({"prompt": ["Describe <image>", "Hi"], "chosen": ["Red.", "Hello."],
                             "rejected": ["Blue.", "Go away."], "images": [[{"bytes": png(3), "path": "x.png"}], []]}),
                   tmp_path / "plain.parquet")
    conv = lambda *t: [{"role": r, "content": c} for r, c in zip(("user", "assistant"), t)]  # noqa: E731
    pq.write_table(pa.table({"chosen": [conv("Q", "good")], "rejected": [conv("Q", "bad")]}),
                   tmp_path / "implicit.parquet")
    pq.write_table(pa.table({"prompt": ["Is it?"], "completion": ["Yes."], "label": [False]}), tmp_path / "kto.parquet")
    s = run("trl", tmp_path, tmp_path / "out")
    assert s["written"] == 4 and s["skipped"] == 0 and s["markers_added"] == 0
    out = shards(tmp_path / "out")
    # files in sorted order: implicit, kto, plain
    assert record(out["trl-00000000"]) == {"prompt": "Q", "chosen": "good", "rejected": "bad"}
    assert record(out["trl-00000001"]) == {"prompt": "Is it?", "completion": "Yes.", "label": False}
    assert record(out["trl-00000002"]) == {"prompt": "Describe <image>", "chosen": "Red.", "rejected": "Blue."}
    assert out["trl-00000002"]["png"] == png(3) and set(out["trl-00000003"]) == {"json"}


# ---- LLaMA-Factory ----

def test_llamafactory(tmp_path, root):
    t = lambda who, v: {"from": who, "value": v}  # noqa: E731
    good = [
        {"id": "l0", "conversations": [t("human", "<image>What is it?")], "chosen": t("gpt", "A cat."),
         "rejected": t("gpt", "A dog."), "images": ["img/a0.jpg"]},
        {"id": "l1", "conversations": [t("system", "Be kind."), t("human", "Hi"), t("gpt", "Hello"),
                                       t("human", "<video>What now?")],
         "chosen": t("gpt", "It moves."), "rejected": t("gpt", "Bye."), "videos": ["vid/v.mp4"]},
        {"id": "l2", "conversations": [t("human", "<audio><image>Match?")], "chosen": t("gpt", "Yes."),
         "rejected": t("gpt", "No."), "audios": ["aud/a.wav"], "images": ["img/a1.png"]},
    ]
    bad = [{"id": f"bad-{n}", "conversations": [t("human", "<image>Q")], "chosen": t("gpt", "a"),
            "rejected": t("gpt", "b"), "images": [p]} for n, (p, _) in bad_paths(tmp_path).items()]
    bad += [b'{"conversations": [',
            b'{"conversations": [{"from": "human", "value": "\xff"}], "chosen": {"from": "gpt", "value": "a"}}',
            {"id": "mismatch", "conversations": [t("human", "Q")], "chosen": t("gpt", "a"), "rejected": t("gpt", "b"),
             "images": ["img/a0.jpg"]},
            {"id": "l0", "conversations": [t("human", "Q")], "chosen": t("gpt", "a"), "rejected": t("gpt", "b")},
            {"id": "norejected", "conversations": [t("human", "Q")], "chosen": t("gpt", "a")},
            {"id": "ends-gpt", "conversations": [t("human", "Q"), t("gpt", "A")], "chosen": t("gpt", "a"),
             "rejected": t("gpt", "b")}]
    write_jsonl(root / "sharegpt.jsonl", good + bad)
    alpaca = [{"instruction": "<image>Describe.", "input": "Briefly.", "chosen": "Red.", "rejected": "Blue.",
               "images": ["img/a2.jpg"]},
              {"instruction": "And now?", "input": "", "system": "Be terse.", "history": [["Hi", "Hello"]],
               "chosen": "Fine.", "rejected": "No."},
              {"instruction": "Q", "output": "A", "kto_tag": False},
              {"instruction": "Q", "chosen": "only one"}]
    (root / "alpaca.json").write_text(json.dumps(alpaca))

    s = run("llamafactory", root / "sharegpt.jsonl", tmp_path / "out")
    assert s["written"] == 3 and s["skipped"] == len(bad)
    assert reasons(s) == {F.MISSING_MEDIA: 1, F.ESCAPE: 3, F.TOO_LARGE: 1, F.UNREADABLE: 1, F.BROKEN_JSON: 1,
                          F.NON_UTF8: 1, F.MISMATCH: 1, F.DUPLICATE: 1, F.MISSING_RESPONSE: 1, F.MALFORMED: 1}
    out = shards(tmp_path / "out")
    assert record(out["l0"]) == {"prompt": "<image>What is it?", "chosen": "A cat.", "rejected": "A dog."}
    assert out["l0"]["jpg"] == jpeg(0)
    assert record(out["l1"]) == {"prompt": [{"role": "user", "content": "Hi"},
                                            {"role": "assistant", "content": "Hello"},
                                            {"role": "user", "content": "<video>What now?"}],
                                 "system": "Be kind.", "chosen": "It moves.", "rejected": "Bye."}
    assert out["l1"]["mp4"] == mp4() and out["l2"]["wav"] == wav() and out["l2"]["png"] == png(1)
    assert_readable(tmp_path / "out")

    s = run("llamafactory", root / "alpaca.json", tmp_path / "out2")
    assert s["written"] == 3 and reasons(s) == {F.MISSING_RESPONSE: 1}
    assert where(s, F.MISSING_RESPONSE) == ["alpaca.json row 3"]
    out = shards(tmp_path / "out2")
    assert record(out["llamafactory-00000000"]) == {"prompt": "<image>Describe.\nBriefly.", "chosen": "Red.",
                                                    "rejected": "Blue."}
    assert record(out["llamafactory-00000001"]) == {
        "prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                   {"role": "user", "content": "And now?"}],
        "system": "Be terse.", "chosen": "Fine.", "rejected": "No."}
    assert record(out["llamafactory-00000002"]) == {"prompt": "Q", "completion": "A", "label": False}


# ---- ms-swift ----

def test_swift(tmp_path, root):
    m = lambda *turns: [{"role": r, "content": c} for r, c in turns]  # noqa: E731
    good = [
        {"messages": m(("system", "You help."), ("user", "<image>What is it?"), ("assistant", "A cat.")),
         "rejected_response": "A dog.", "images": ["img/a0.jpg"]},
        {"messages": m(("user", "<image><image>Same?"), ("assistant", "No.")), "rejected_response": "Yes.",
         "images": ["img/a1.png", "img/a2.jpg"]},
        {"messages": m(("user", "<video>What happens?"), ("assistant", "It pans.")), "rejected_response": "Nothing.",
         "videos": ["vid/v.mp4"]},
        {"messages": m(("user", "<audio>Heard?"), ("assistant", "A tone.")), "label": True, "audios": ["aud/a.wav"]},
    ]
    bad = [{"messages": m(("user", "<image>Q"), ("assistant", "a")), "rejected_response": "b", "images": [p]}
           for p, _ in bad_paths(tmp_path).values()]
    bad += [b'{"messages": [}',
            b'{"messages": [{"role": "user", "content": "\xc3"}, {"role": "assistant", "content": "a"}], '
            b'"rejected_response": "b"}',
            {"messages": m(("user", "Q"), ("assistant", "a")), "rejected_response": "b", "images": ["img/a0.jpg"]},
            {"messages": m(("user", "<image>Q"), ("assistant", "a")), "images": ["img/a0.jpg"]},
            {"messages": m(("user", "<image>Q")), "rejected_response": "b", "images": ["img/a0.jpg"]}]
    write_jsonl(root / "swift.jsonl", good + bad)
    s = run("swift", root / "swift.jsonl", tmp_path / "out")
    assert s["written"] == 4
    assert reasons(s) == {F.MISSING_MEDIA: 1, F.ESCAPE: 3, F.TOO_LARGE: 1, F.UNREADABLE: 1, F.BROKEN_JSON: 1,
                          F.NON_UTF8: 1, F.MISMATCH: 1, F.MISSING_RESPONSE: 2}
    out = shards(tmp_path / "out")
    assert record(out["swift-00000000"]) == {"prompt": "<image>What is it?", "system": "You help.", "chosen": "A cat.",
                                             "rejected": "A dog."}
    assert out["swift-00000000"]["jpg"] == jpeg(0)
    assert out["swift-00000001"]["0.png"] == png(1) and out["swift-00000001"]["1.jpg"] == jpeg(2)
    assert out["swift-00000002"]["mp4"] == mp4()
    assert record(out["swift-00000003"]) == {"prompt": "<audio>Heard?", "completion": "A tone.", "label": True}
    assert out["swift-00000003"]["wav"] == wav()
    assert_readable(tmp_path / "out")


# ---- RLAIF-V ----

@needs_pyarrow
def test_rlaifv(tmp_path, root):
    cols = ["ds_name", "image", "question", "chosen", "rejected", "origin_dataset", "origin_split", "idx", "image_path"]
    r = lambda img, q="What is shown?", c="A cat.", rej="A dog.": dict(zip(cols, (  # noqa: E731
        "RLAIF-V", img, q, c, rej, "coco", "{}", "0", "x.jpg")))
    rows = [r({"bytes": jpeg(0), "path": "x.jpg"}),
            r({"bytes": png(1), "path": None}, q="Colour?", c="Red.", rej="Blue."),
            r({"bytes": bomb_png(), "path": None}), r({"bytes": GARBAGE, "path": None}), r(None),
            r({"bytes": jpeg(2), "path": None}, c=None), r({"bytes": jpeg(3), "path": None}, q="<image><image> twice")]
    schema = pa.schema([(c, image_type() if c == "image" else pa.string()) for c in cols])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), root / "RLAIF-V-Dataset_000.parquet")
    # a variant with raw image bytes and the question as a binary column (one not UTF-8)
    pq.write_table(pa.table({"image": [jpeg(5), jpeg(6)], "question": [b"Ok?", b"caf\xe9?"], "chosen": ["y", "y"],
                             "rejected": ["n", "n"]}), root / "raw.parquet")
    s = run("rlaifv", root, tmp_path / "out")
    assert s["written"] == 3 and s["markers_added"] == 3
    assert reasons(s) == {F.TOO_LARGE: 1, F.UNREADABLE: 1, F.MISSING_MEDIA: 1, F.MISSING_RESPONSE: 1, F.MISMATCH: 1,
                          F.NON_UTF8: 1}
    assert where(s, F.NON_UTF8) == ["raw.parquet row 1"]
    out = shards(tmp_path / "out")
    assert record(out["rlaifv-00000000"]) == {"prompt": "<image>\nWhat is shown?", "chosen": "A cat.",
                                              "rejected": "A dog."}
    assert out["rlaifv-00000000"]["jpg"] == jpeg(0) and out["rlaifv-00000001"]["png"] == png(1)
    assert record(out["rlaifv-00000007"])["prompt"] == "<image>\nOk?" and out["rlaifv-00000007"]["jpg"] == jpeg(5)
    assert_readable(tmp_path / "out")


# ---- align-anything ----

@needs_pyarrow
def test_align_anything(tmp_path, root):
    ti2t = [{"question": "What is it?", "image": {"bytes": jpeg(0), "path": None}, "response_1": "A dog.",
             "response_2": "A cat.", "overall_response": 2},
            {"question": "Colour?", "image": {"bytes": png(1), "path": None}, "response_1": "Red.",
             "response_2": "Blue.", "overall_response": 1},
            {"question": "Tie?", "image": {"bytes": jpeg(2), "path": None}, "response_1": "a", "response_2": "b",
             "overall_response": 3},
            {"question": "Big?", "image": {"bytes": bomb_png(), "path": None}, "response_1": "a", "response_2": "b",
             "overall_response": 1}]
    pq.write_table(pa.Table.from_pylist(ti2t), root / "ti2t.parquet")
    write_jsonl(root / "tv2t.jsonl", [
        {"prompt": "<video>What happens?", "video_path": "./vid/v.mp4", "response_1": "It pans.", "response_2": "No.",
         "overall_response": "1"},
        {"prompt": "What?", "video_path": "../outside.jpg", "response_1": "a", "response_2": "b",
         "overall_response": 1}])
    pq.write_table(pa.Table.from_pylist([{"prompt": "What sound?", "audio_path": {"bytes": wav(), "path": "a.wav"},
                                          "response_1": "Speech.", "response_2": "A tone.", "overall_response": 2}]),
                   root / "ta2t.parquet")
    s = run("align_anything", root, tmp_path / "out")
    assert s["written"] == 4 and s["markers_added"] == 3
    assert reasons(s) == {F.BAD_LABEL: 1, F.TOO_LARGE: 1, F.ESCAPE: 1}
    assert where(s, F.BAD_LABEL) == ["ti2t.parquet row 2"]
    out = shards(tmp_path / "out")
    first = out["align_anything-00000000"]  # ta2t.parquet sorts first
    assert record(first) == {"prompt": "<audio>\nWhat sound?", "chosen": "A tone.", "rejected": "Speech."}
    assert first["wav"] == wav()
    assert record(out["align_anything-00000001"]) == {"prompt": "<image>\nWhat is it?", "chosen": "A cat.",
                                                      "rejected": "A dog."}
    assert out["align_anything-00000001"]["jpg"] == jpeg(0) and out["align_anything-00000002"]["png"] == png(1)
    video = out["align_anything-00000005"]
    assert record(video) == {"prompt": "<video>What happens?", "chosen": "It pans.", "rejected": "No."}
    assert video["mp4"] == mp4()
    assert_readable(tmp_path / "out")


# ---- shared behaviour ----

@pytest.mark.parametrize("size", [(100000, 100000), (10000, 10000), (9000, 8000)])
def test_image_pixel_limit(tmp_path, size):
    """Over 64 megapixels is refused from the header alone, whether or not Pillow's own bomb check fires."""
    with pytest.raises(F.Skip) as e:
        Media(str(tmp_path)).load(bomb_png(*size), "image")
    assert e.value.reason == F.TOO_LARGE


def test_resize_sharding_and_cli(tmp_path, root, capsys):
    (root / "img" / "big.png").write_bytes(png(7, size=64))
    rows = [{"id": f"r{i}", "prompt": "<image>", "chosen": "a", "rejected": "b",
             "images": ["img/big.png" if i % 2 else "img/a0.jpg"]} for i in range(5)]
    write_jsonl(root / "r.jsonl", rows)
    out = tmp_path / "out"
    assert main(["jsonl", str(root / "r.jsonl"), str(out / "s-%02d.tar"), "--resize", "32", "--maxcount", "2"]) == 0
    assert "jsonl: 5 written to 3 shard(s), 0 skipped" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["s-00.tar", "s-01.tar", "s-02.tar"]
    samples = shards(out)
    assert samples["r0"]["jpg"] == jpeg(0)  # 16 px: under the limit, copied as is
    assert Image.open(io.BytesIO(samples["r1"]["jpg"])).size == (32, 32)  # 64 px PNG -> 32 px JPEG
    # the thin wrapper in tools/ runs the same main; nothing written -> exit status 1
    write_jsonl(root / "none.jsonl", [{"prompt": "x"}])
    argv = sys.argv
    sys.argv = ["tools/convert.py", "jsonl", str(root / "none.jsonl"), str(tmp_path / "o2" / "s-%02d.tar")]
    try:
        with pytest.raises(SystemExit) as e:
            runpy.run_path(str(ROOT / "tools" / "convert.py"), run_name="__main__")
    finally:
        sys.argv = argv
    assert e.value.code == 1 and not (tmp_path / "o2").exists()
    with pytest.raises(ValueError, match="shard number"):
        convert("jsonl", str(root / "r.jsonl"), str(tmp_path / "single.tar"), log=None)


class SensorAdapter(ModalityAdapter):
    """A modality anyalign does not know, defined only here: the converter learns it from ``--adapter``."""
    placeholder = "<sensor>"
    extensions = ("sig",)


def test_out_of_tree_adapter_gives_marker_and_extensions(tmp_path, capsys):
    trace = b"\x00\x01 a sensor trace \xff"
    (tmp_path / "a.sig").write_bytes(trace)
    (tmp_path / "b.csv").write_text("t,x\n0,1\n")
    row = {"id": "s0", "prompt": "<sensor>\nWhat happened?", "chosen": "A bump.", "rejected": "Nothing.",
           "media": {"sensor": ["a.sig"]}}
    write_jsonl(tmp_path / "s.jsonl", [
        row, {**row, "id": "s1", "prompt": "<image><sensor>", "media": {"sensor": "a.sig"}, "images": ["a.sig"]},
        {**row, "id": "s2", "prompt": "What happened?"},  # no marker for its sensor item
        {**row, "id": "s3", "media": {"sensor": ["b.csv"]}},  # not an extension the adapter declares
        {**row, "id": "s4", "chosen": "<sensor> A bump."}])
    out = tmp_path / "out"
    spec = f"sensor={SensorAdapter.__module__}.SensorAdapter"
    assert main(["jsonl", str(tmp_path / "s.jsonl"), str(out / "s-%02d.tar"), "--adapter", spec]) == 0
    report = capsys.readouterr().out
    assert "jsonl: 1 written to 1 shard(s), 4 skipped" in report, report
    samples = shards(out)
    assert list(samples) == ["s0"] and samples["s0"]["sig"] == trace
    assert record(samples["s0"]) == {"prompt": "<sensor>\nWhat happened?", "chosen": "A bump.", "rejected": "Nothing."}
    assert media_fields(samples["s0"], SensorAdapter.extensions) == [("sig", "sig")]

    s = convert("jsonl", str(tmp_path / "s.jsonl"), str(tmp_path / "o2" / "s-%02d.tar"), log=None,
                adapters={"sensor": SensorAdapter})
    assert s["written"] == 1
    assert reasons(s) == {F.UNREADABLE: 2, F.MISMATCH: 1, F.MARKER_IN_RESPONSE: 1}
    assert [e["key"] for e in s["skipped_by_reason"][F.UNREADABLE]["examples"]] == ["s1", "s3"]  # no image; .csv
    # without the adapter the modality is unknown: skipped with a reason that says how to add it
    s = convert("jsonl", str(tmp_path / "s.jsonl"), str(tmp_path / "o3" / "s-%02d.tar"), log=None)
    assert s["written"] == 0 and reasons(s) == {F.UNSUPPORTED: 5}
    assert "--adapter NAME=pkg.module.Class" in s["skipped_by_reason"][F.UNSUPPORTED]["examples"][0]["detail"]
    with pytest.raises(SystemExit):  # a class path that does not import is an error of the command line
        main(["jsonl", str(tmp_path / "s.jsonl"), str(tmp_path / "o4" / "s-%02d.tar"), "--adapter", "x=no.such.Cls"])
    assert "adapter class 'no.such.Cls'" in capsys.readouterr().err


HEAVY = {"transformers", "lightning", "librosa", "torchaudio", "decord", "soundfile"}


def test_converter_imports_are_light():
    """``--help`` (the parser) imports no torch, Pillow, numpy, webdataset or pyarrow; a conversion imports the
    adapters' modules (torch) but no encoder library, decoder or Lightning; ``python -m`` starts in well
    under 5 s."""
    code = ("import sys\nfrom anyalign.convert.cli import parser\nparser().format_help()\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & %r))\n"
            "from anyalign.convert.run import convert\nfrom anyalign.convert.adapters import resolve\nresolve()\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & %r))"
            % (HEAVY | {"torch", "PIL", "numpy", "webdataset", "pyarrow"}, HEAVY))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["[]", "[]"], out.stdout + out.stderr
    import time
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "anyalign.convert", "--help"], cwd=ROOT, capture_output=True, check=True)
    assert time.perf_counter() - t < 5


def test_zz_converted_shards_of_every_format_train(tmp_path, monkeypatch):
    """Runs after the converter tests (file order): one epoch over everything they wrote."""
    import tarfile

    from anyalign.__main__ import main
    from conftest import ROOT
    formats = {"jsonl", "trl", "llamafactory", "swift", "rlaifv", "align_anything"}
    if not formats <= set(CONVERTED):
        pytest.skip("needs the converter tests of this file to have run first")
    monkeypatch.chdir(ROOT)
    keys_of = {}
    for fmt, shards in CONVERTED.items():
        for shard in shards:
            with tarfile.open(shard) as tar:
                keys_of.update({m.name.partition(".")[0]: fmt for m in tar if m.name.endswith(".json")})
    log = tmp_path / "trained.jsonl"
    adapters = {"image": {"class_path": "modalities.ImageAdapter"}, "video": {"class_path": "modalities.VideoAdapter"},
                "audio": {"class_path": "modalities.AudioAdapter", "init_args": {"encoder": "assets/tiny-audio"}}}
    main(["fit", "--config", "configs/image_dpo.yaml", "--data.train_shards", json.dumps(sorted(
          s for shards in CONVERTED.values() for s in shards)), "--data.val_shards", "null",
          "--model.adapters", json.dumps(adapters), "--trainer.max_epochs", "1", "--trainer.max_steps", "-1",
          "--data.batch_size", "4", "--data.num_workers", "0", "--trainer.num_sanity_val_steps", "0",
          "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path / "run"),
          "--model.export_dir", "null", "--model.scheduler", "constant", "--trainer.callbacks",
          json.dumps([{"class_path": "test_resume.Recorder", "init_args": {"path": str(log)}}])])
    trained = {k for line in open(log) for k in json.loads(line)["keys"]}
    assert formats <= {keys_of[k] for k in trained}, "some format's shards trained no sample"
