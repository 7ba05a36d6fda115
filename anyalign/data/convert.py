"""Convert other tools' preference datasets into anyalign's WebDataset shards.

    python -m anyalign.data.convert FORMAT SOURCE OUT_PATTERN [--media-root DIR] [--maxcount N]
                                    [--maxsize BYTES] [--resize N]

FORMAT is one of jsonl, trl, llamafactory, swift, rlaifv, align_anything (the row layouts live in
``convert_formats.py``). SOURCE is a .jsonl/.json/.parquet/.arrow file, a Hugging Face ``save_to_disk``
directory (``state.json`` + ``data-*.arrow``, or ``dataset_dict.json`` + one such directory per split), or
any other directory, whose .jsonl/.json/.parquet/.arrow files are read in sorted order (recursively).
OUT_PATTERN names the shards, e.g. ``out/train-%06d.tar``.

Every row goes through one path: layout -> key -> markers and text checks (the shard parser's own
``parse_record``) -> media checks -> ``webdataset.ShardWriter``. A bad row is skipped and counted by reason,
never fatal. Media paths are relative to ``--media-root`` (default: the directory holding SOURCE) and may not
leave it (``..``, absolute paths elsewhere, symlinks out). Media bytes are copied as they are; images are only
opened to check them (Pillow ``verify``, at most 64 megapixels), and re-encoded as JPEG only when
``--resize N`` is given and their longer side exceeds N.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
import time
import warnings
from typing import Iterator

from modalities import BadSample
from modalities.vision import MAX_PIXELS  # the image adapter's own limit

from .convert_formats import (BAD_SOURCE, BROKEN_JSON, DUPLICATE, ESCAPE, FORMATS, MALFORMED, MARKER_IN_RESPONSE,
                              MARKERS, MISMATCH, MISSING_MEDIA, MISSING_PROMPT, NON_UTF8, TOO_LARGE, UNREADABLE,
                              UNSUPPORTED, Skip)
from .schema import parse_record

IMAGE_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
# container family of each extension we write; the first extension of a family is its canonical one
FAMILIES = {"video": {"mp4": "iso", "mov": "iso", "mkv": "ebml", "webm": "ebml", "avi": "avi"},
            "audio": {"wav": "wav", "flac": "flac", "mp3": "mp3", "ogg": "ogg"}}
TABLE_SUFFIXES = (".jsonl", ".json", ".parquet", ".arrow")
METADATA = {"dataset_info.json", "state.json", "dataset_dict.json"}


# ---- reading sources ----

def _pyarrow():
    try:
        import pyarrow
        import pyarrow.ipc
        import pyarrow.parquet
    except ImportError:
        raise SystemExit("reading .parquet/.arrow needs pyarrow: pip install pyarrow") from None
    return pyarrow


def source_files(source: str) -> list[str]:
    if os.path.isfile(source):
        return [source]
    if not os.path.isdir(source):
        raise FileNotFoundError(f"no such file or directory: {source}")
    state, splits = os.path.join(source, "state.json"), os.path.join(source, "dataset_dict.json")
    if os.path.isfile(state):  # one save_to_disk split
        with open(state, encoding="utf-8") as f:
            names = [d["filename"] for d in json.load(f).get("_data_files", [])]
        return [os.path.join(source, n) for n in names] or sorted(
            os.path.join(source, n) for n in os.listdir(source) if n.endswith(".arrow"))
    if os.path.isfile(splits):  # a save_to_disk DatasetDict: one directory per split
        with open(splits, encoding="utf-8") as f:
            return [p for s in json.load(f)["splits"] for p in source_files(os.path.join(source, s))]
    found = []
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames.sort()
        found += [os.path.join(dirpath, n) for n in sorted(filenames)
                  if n.endswith(TABLE_SUFFIXES) and n not in METADATA]
    return found


def _json_rows(path: str, name: str) -> Iterator[tuple[str, object]]:
    with open(path, "rb") as f:
        if path.endswith(".json"):  # a JSON list (or one object); some .json files are really JSON lines
            raw = f.read().decode("utf-8", "surrogateescape")  # bad bytes surface later as NON_UTF8
            try:
                rows = json.loads(raw.lstrip("\ufeff"))
            except json.JSONDecodeError as e:
                if raw.lstrip("\ufeff \t\r\n").startswith("["):
                    yield name, Skip(BROKEN_JSON, f"the whole file: {e.msg} at line {e.lineno}")
                    return
            else:
                for i, row in enumerate(rows if isinstance(rows, list) else [rows]):
                    yield f"{name} row {i}", row
                return
            f.seek(0)
        for n, line in enumerate(f, 1):
            where = f"{name} line {n}"
            line = line.removeprefix(b"\xef\xbb\xbf") if n == 1 else line
            if not line.strip():
                continue
            try:
                yield where, json.loads(line.decode("utf-8"))
            except UnicodeDecodeError:
                yield where, Skip(NON_UTF8, "the line is not valid UTF-8")
            except json.JSONDecodeError as e:
                yield where, Skip(BROKEN_JSON, f"{e.msg} at character {e.pos}")


def _table_rows(path: str, name: str) -> Iterator[tuple[str, object]]:
    pa = _pyarrow()
    if path.endswith(".parquet"):
        batches = pa.parquet.ParquetFile(path).iter_batches(batch_size=256)
    else:  # save_to_disk writes the Arrow IPC stream format; accept the file format too
        source = pa.memory_map(path)
        try:
            batches = iter(pa.ipc.open_stream(source))
        except pa.ArrowInvalid:
            reader = pa.ipc.open_file(source)
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
    i = 0
    for batch in batches:
        for row in batch.to_pylist():
            yield f"{name} row {i}", row
            i += 1


def iter_rows(source: str) -> Iterator[tuple[str, object]]:
    """-> ``(where, row)``; row is a dict, another JSON value, or a ``Skip`` for what could not be read."""
    base = source if os.path.isdir(source) else os.path.dirname(source)
    for path in source_files(source):
        name = os.path.relpath(path, base)
        try:
            yield from (_json_rows if path.endswith((".json", ".jsonl")) else _table_rows)(path, name)
        except (OSError, ValueError, KeyError, TypeError) as e:  # pyarrow's errors subclass these
            yield name, Skip(BAD_SOURCE, f"{type(e).__name__}: {str(e)[:200]}")


# ---- media ----

def _sniff(data: bytes) -> str | None:
    """Container family from the first bytes, or None."""
    if data[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free"):
        return "iso"
    if data[:4] == b"\x1aE\xdf\xa3":
        return "ebml"
    if data[:4] == b"RIFF":
        return {b"AVI ": "avi", b"WAVE": "wav"}.get(data[8:12])
    if data[:4] == b"fLaC":
        return "flac"
    if data[:4] == b"OggS":
        return "ogg"
    if data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0):
        return "mp3"
    return None


class Media:
    """Loads one media item (path under the root, raw bytes, or a ``{"bytes", "path"}`` struct) and checks it."""

    def __init__(self, root: str, resize: int | None = None):
        self.root, self.resize = os.path.realpath(root), resize

    def read(self, path: str) -> bytes:
        if "://" in path:
            raise Skip(UNSUPPORTED, f"URL {path} (download media first)")
        try:
            real = os.path.realpath(path if os.path.isabs(path) else os.path.join(self.root, path))
        except ValueError:  # e.g. an embedded NUL
            raise Skip(MALFORMED, f"media path {path!r}") from None
        if os.path.commonpath([real, self.root]) != self.root:
            raise Skip(ESCAPE, path)
        try:
            with open(real, "rb") as f:
                return f.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise Skip(MISSING_MEDIA, path) from None
        except OSError as e:
            raise Skip(UNREADABLE, f"{path}: {e.strerror}") from None

    def load(self, src, modality: str) -> tuple[bytes, str]:
        """-> (bytes to write, extension)."""
        hint = None
        if isinstance(src, dict):
            hint = src.get("path")
            src = src.get("bytes") if src.get("bytes") is not None else hint
        if isinstance(src, str):
            hint, data = src, self.read(src)
        elif isinstance(src, (bytes, bytearray, memoryview)):
            data = bytes(src)
        elif src is None:
            raise Skip(MISSING_MEDIA, f"an empty {modality} item")
        else:
            raise Skip(MALFORMED, f"a {modality} item is {type(src).__name__}")
        if not data:
            raise Skip(UNREADABLE, f"empty {modality} {hint or ''}".strip())
        if modality == "image":
            return self.image(data)
        family, families = _sniff(data), FAMILIES[modality]
        if family not in families.values():
            raise Skip(UNREADABLE, f"not a {modality} container we know ({'/'.join(families)}): {hint or 'bytes'}")
        ext = os.path.splitext(hint)[1][1:].lower() if isinstance(hint, str) else ""
        if families.get(ext) != family:
            ext = next(e for e, f in families.items() if f == family)
        return data, ext

    def image(self, data: bytes) -> tuple[bytes, str]:
        from PIL import Image
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im = Image.open(io.BytesIO(data))
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise Skip(TOO_LARGE, f"{w}x{h} is over {MAX_PIXELS // 1_000_000} megapixels")
                fmt = im.format
                im.verify()
                if self.resize and (max(w, h) > self.resize or fmt not in IMAGE_FORMATS):
                    im = Image.open(io.BytesIO(data))
                    im.draft("RGB", (self.resize, self.resize))
                    im = im.convert("RGB")
                    im.thumbnail((self.resize, self.resize), Image.Resampling.LANCZOS)
                    out = io.BytesIO()
                    im.save(out, "JPEG", quality=90)
                    return out.getvalue(), "jpg"
        except Skip:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise Skip(TOO_LARGE, str(e)[:200]) from None
        except Exception as e:
            raise Skip(UNREADABLE, f"image: {type(e).__name__}: {str(e)[:200]}") from None
        if fmt not in IMAGE_FORMATS:
            raise Skip(UNSUPPORTED, f"image format {fmt} (jpg/png/webp only; --resize re-encodes it)")
        return data, IMAGE_FORMATS[fmt]


# ---- one record -> one sample ----

def make_key(id_, fmt: str, index: int) -> str:
    if isinstance(id_, (str, int)) and not isinstance(id_, bool):
        key = re.sub(r"[.\s/\\]", "_", str(id_))
        if key:
            return key
    return f"{fmt}-{index:08d}"


def _encode(record: dict) -> bytes:
    try:
        data = json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise Skip(NON_UTF8, "text with bytes that are not UTF-8") from None
    check = data if "chosen" in record else json.dumps(  # KTO: check its prompt with the same parser
        {**record, "chosen": record["completion"], "rejected": record["completion"]}).encode()
    try:
        parse_record(check)
    except BadSample as e:
        raise Skip(MALFORMED, str(e)) from None
    return data


def build(cand: dict, key: str, media: Media) -> tuple[dict, bool]:
    """Candidate record -> (sample for the ShardWriter, whether markers were prepended)."""
    messages = [dict(m) for m in cand["messages"]]
    system = messages.pop(0)["content"] if messages and messages[0]["role"] == "system" else None
    if not messages:
        raise Skip(MISSING_PROMPT, "only a system message")
    items = {m: v for m, v in cand["media"].items() if v}
    added = False
    for modality, marker in MARKERS.items():
        n = len(items.get(modality, ()))
        count = sum(m["content"].count(marker) for m in messages) + (system or "").count(marker)
        if count == 0 and n and cand.get("add_markers"):
            first = next((m for m in messages if m["role"] == "user"), messages[0])
            first["content"] = f"{marker}\n" * n + first["content"]
            count, added = n, True
        if count != n:
            raise Skip(MISMATCH, f"{count} {marker} marker(s) but {n} {modality} item(s)")
    answers = ("chosen", "rejected") if "chosen" in cand else ("completion",)
    if any(marker in cand[a] for a in answers for marker in MARKERS.values()):
        raise Skip(MARKER_IN_RESPONSE, "a response holds a media marker")
    one_turn = len(messages) == 1 and messages[0]["role"] == "user"
    record = {"prompt": messages[0]["content"] if one_turn else messages}
    if system is not None:
        record["system"] = system
    record.update({a: cand[a] for a in answers})
    if "label" in cand:
        record["label"] = cand["label"]
    sample = {"__key__": key, "json": _encode(record)}
    for modality, srcs in items.items():
        for i, src in enumerate(srcs):
            data, ext = media.load(src, modality)
            sample[f"{i}.{ext}" if len(srcs) > 1 else ext] = data
    return sample, added


# ---- the run ----

class Summary:
    def __init__(self, fmt: str, source: str):
        self.fmt, self.source, self.start = fmt, source, time.perf_counter()
        self.written, self.markers_added, self.shards, self.reasons = 0, 0, [], {}

    def skip(self, reason: str, where: str, key: str | None, detail: str) -> None:
        entry = self.reasons.setdefault(reason, {"count": 0, "examples": []})
        entry["count"] += 1
        if len(entry["examples"]) < 5:
            entry["examples"].append({"where": where, "key": key, "detail": detail})

    def as_dict(self) -> dict:
        seconds = time.perf_counter() - self.start
        return {"format": self.fmt, "source": self.source, "written": self.written,
                "skipped": sum(r["count"] for r in self.reasons.values()), "skipped_by_reason": self.reasons,
                "markers_added": self.markers_added, "shards": self.shards, "seconds": round(seconds, 3)}


def _report(s: dict) -> str:
    lines = [f"{s['format']}: {s['written']} written to {len(s['shards'])} shard(s), {s['skipped']} skipped "
             f"({s['seconds']:.1f} s)"]
    for reason, entry in sorted(s["skipped_by_reason"].items(), key=lambda kv: -kv[1]["count"]):
        ex = "; ".join(f"{e['where']}" + (f" [{e['key']}]" if e["key"] else "") + (f": {e['detail']}" if e["detail"]
                       else "") for e in entry["examples"][:3])
        lines.append(f"  skipped {entry['count']} x {reason}   e.g. {ex}")
    if s["markers_added"]:
        lines.append(f"  note: {s['markers_added']} prompt(s) had media but no marker; markers were prepended")
    return "\n".join(lines)


def convert(fmt: str, source: str, out_pattern: str, media_root: str | None = None, maxcount: int = 10000,
            maxsize: int = 1_000_000_000, resize: int | None = None, log=print) -> dict:
    """Convert SOURCE in layout ``fmt`` into shards named by ``out_pattern`` (``%d``-style); -> the summary."""
    import webdataset as wds
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    try:
        if out_pattern % 0 == out_pattern % 1:
            raise TypeError
    except TypeError:
        raise ValueError(f"OUT_PATTERN needs a shard number, e.g. out/train-%06d.tar (got {out_pattern!r})") from None
    root = media_root if media_root is not None else (source if os.path.isdir(source) else os.path.dirname(source))
    media, summary, keys, writer = Media(root or ".", resize), Summary(fmt, source), set(), None
    try:
        for index, (where, row) in enumerate(iter_rows(source)):
            key = None
            try:
                if isinstance(row, Skip):
                    raise row
                if not isinstance(row, dict):
                    raise Skip(BROKEN_JSON, f"a record is {type(row).__name__}, not an object")
                cand = FORMATS[fmt](row)
                key = make_key(cand.get("id"), fmt, index)
                if key in keys:
                    raise Skip(DUPLICATE, f"key {key} was already written")
                sample, added = build(cand, key, media)
            except Skip as s:
                summary.skip(s.reason, where, key, s.detail)
                continue
            except Exception as e:  # a bad record never stops the run
                summary.skip("unexpected error", where, key, f"{type(e).__name__}: {str(e)[:200]}")
                continue
            if writer is None:  # opened on the first good sample; errors writing the output do stop the run
                os.makedirs(os.path.dirname(os.path.abspath(out_pattern % 0)), exist_ok=True)
                writer = wds.ShardWriter(out_pattern, maxcount=maxcount, maxsize=maxsize, verbose=0,
                                         post=summary.shards.append, encoder=False,
                                         mtime=int(time.time()))  # a float mtime costs a pax header per member
            writer.write(sample)
            keys.add(key)
            summary.written += 1
            summary.markers_added += added
    finally:
        if writer is not None:
            writer.close()
    result = summary.as_dict()
    if log:
        log(_report(result))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m anyalign.data.convert", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("format", choices=list(FORMATS), help="the source layout")
    p.add_argument("source", help="a .jsonl/.json/.parquet/.arrow file, a save_to_disk directory, or a directory")
    p.add_argument("out_pattern", help="shard names with a shard number, e.g. out/train-%%06d.tar")
    p.add_argument("--media-root", help="media paths are relative to this and may not leave it "
                                        "(default: the directory of SOURCE)")
    p.add_argument("--maxcount", type=int, default=10000, help="samples per shard at most (default 10000)")
    p.add_argument("--maxsize", type=lambda s: int(float(s)), default=1_000_000_000,
                   help="bytes per shard before a new one starts (default 1e9)")
    p.add_argument("--resize", type=int, help="shrink images to this longer side, re-encoded as JPEG")
    a = p.parse_args(argv)
    if not os.path.exists(a.source):
        p.error(f"no such file or directory: {a.source}")
    try:
        summary = convert(a.format, a.source, a.out_pattern, a.media_root, a.maxcount, a.maxsize, a.resize)
    except ValueError as e:
        p.error(str(e))
    return 0 if summary["written"] else 1


if __name__ == "__main__":
    sys.exit(main())
