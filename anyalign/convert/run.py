"""The run: every row goes through one path -- layout (``formats.py``) -> key -> markers and text checks (the
shard parser's own ``parse_record``) -> media checks (``media.py``) -> ``webdataset.ShardWriter``. A bad row is
skipped and counted by reason, never fatal; the summary lists the counts with a few examples each."""
from __future__ import annotations

import json
import os
import re
import time
from typing import Mapping

from anyalign.data.schema import parse_record
from modalities.base import BadSample

from .adapters import accepted_extensions, markers, resolve
from .formats import FORMATS, RANK_KEYS, unknown_jsonl_keys
from .media import Media
from .reasons import BROKEN_JSON, DUPLICATE, MALFORMED, MARKER_IN_RESPONSE, MISMATCH, MISSING_PROMPT, NON_UTF8, \
    UNSUPPORTED, Skip
from .sources import iter_rows


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
    check = data if "chosen" in record or "responses" in record else json.dumps(  # KTO: check its prompt with the same parser
        {**record, "chosen": record["completion"], "rejected": record["completion"]}).encode()
    try:
        parse_record(check)
    except BadSample as e:
        raise Skip(MALFORMED, str(e)) from None
    return data


def build(cand: dict, key: str, media: Media, markers: Mapping[str, str]) -> tuple[dict, bool]:
    """Candidate record -> (sample for the ShardWriter, whether markers were prepended). ``markers``: modality
    name -> placeholder, for every modality known to the run (their markers are counted in every prompt)."""
    messages = [dict(m) for m in cand["messages"]]
    system = messages.pop(0)["content"] if messages and messages[0]["role"] == "system" else None
    if not messages:
        raise Skip(MISSING_PROMPT, "only a system message")
    items = {m: v for m, v in cand["media"].items() if v}
    unknown = sorted(set(items) - set(markers))
    if unknown:
        raise Skip(UNSUPPORTED, f"{unknown[0]} items, but no adapter for modality {unknown[0]!r} (known: "
                                f"{', '.join(sorted(markers))}; add one with --adapter NAME=pkg.module.Class)")
    by_marker: dict[str, list[str]] = {}  # modalities may share a placeholder (image and multi_image)
    for modality, marker in markers.items():
        by_marker.setdefault(marker, []).append(modality)
    added = False
    for marker, modalities in by_marker.items():
        present = [m for m in modalities if m in items]
        n = sum(len(items[m]) for m in present)
        count = sum(m["content"].count(marker) for m in messages) + (system or "").count(marker)
        if count == 0 and n and cand.get("add_markers"):
            first = next((m for m in messages if m["role"] == "user"), messages[0])
            first["content"] = f"{marker}\n" * n + first["content"]
            count, added = n, True
        if count != n:
            raise Skip(MISMATCH, f"{count} {marker} marker(s) but {n} {'/'.join(present or modalities[:1])} item(s)")
    answers = ("chosen", "rejected") if "chosen" in cand else ("completion",) if "completion" in cand else ()
    texts = [cand[a] for a in answers] + list(cand.get("responses", ()))  # a pair, a completion or K responses
    if any(marker in t for t in texts for marker in by_marker):
        raise Skip(MARKER_IN_RESPONSE, "a response holds a media marker")
    one_turn = len(messages) == 1 and messages[0]["role"] == "user"
    record = {"prompt": messages[0]["content"] if one_turn else messages}
    if system is not None:
        record["system"] = system
    record.update({a: cand[a] for a in answers})
    record.update({k: cand[k] for k in ("responses", *RANK_KEYS) if k in cand})  # K responses and their order
    if "label" in cand:
        record["label"] = cand["label"]
    record.update(cand.get("kept") or {})  # weighted spans, answer, choices: checked by parse_record in _encode
    sample = {"__key__": key, "json": _encode(record)}
    for modality, srcs in items.items():
        for i, src in enumerate(srcs):
            data, ext = media.load(src, modality)
            field = f"{i}.{ext}" if len(srcs) > 1 else ext
            if field in sample:
                raise Skip(UNSUPPORTED, f"two media items would both be written as {key}.{field}")
            sample[field] = data
    return sample, added


# ---- the run ----

class Summary:
    def __init__(self, fmt: str, source: str):
        self.fmt, self.source, self.start = fmt, source, time.perf_counter()
        self.written, self.markers_added, self.shards, self.reasons, self.warnings = 0, 0, [], {}, []

    def skip(self, reason: str, where: str, key: str | None, detail: str) -> None:
        entry = self.reasons.setdefault(reason, {"count": 0, "examples": []})
        entry["count"] += 1
        if len(entry["examples"]) < 5:
            entry["examples"].append({"where": where, "key": key, "detail": detail})

    def as_dict(self) -> dict:
        seconds = time.perf_counter() - self.start
        return {"format": self.fmt, "source": self.source, "written": self.written,
                "skipped": sum(r["count"] for r in self.reasons.values()), "skipped_by_reason": self.reasons,
                "markers_added": self.markers_added, "shards": self.shards, "warnings": self.warnings,
                "seconds": round(seconds, 3)}


def report(s: dict) -> str:
    lines = [f"{s['format']}: {s['written']} written to {len(s['shards'])} shard(s), {s['skipped']} skipped "
             f"({s['seconds']:.1f} s)"]
    for reason, entry in sorted(s["skipped_by_reason"].items(), key=lambda kv: -kv[1]["count"]):
        ex = "; ".join(f"{e['where']}" + (f" [{e['key']}]" if e["key"] else "") + (f": {e['detail']}" if e["detail"]
                       else "") for e in entry["examples"][:3])
        lines.append(f"  skipped {entry['count']} x {reason}   e.g. {ex}")
    if s["markers_added"]:
        lines.append(f"  note: {s['markers_added']} prompt(s) had media but no marker; markers were prepended")
    lines += [f"  warning: {w}" for w in s.get("warnings", [])]
    return "\n".join(lines)


#: fewer shards than this makes convert warn
MIN_SHARDS = 2


class RoundRobinWriter:
    """``shards`` tar files named by ``out_pattern``, each opened with its first sample; sample ``i`` goes to
    shard ``i % shards``, so every shard gets its share of samples wherever they are in the source."""

    def __init__(self, out_pattern: str, shards: int, post, mtime: int):
        import webdataset as wds

        self.pattern, self.count, self.post, self.mtime, self.wds = out_pattern, shards, post, mtime, wds
        self.writers: dict[int, object] = {}
        self.n = 0

    def write(self, sample: dict) -> None:
        k = self.n % self.count
        if k not in self.writers:
            self.writers[k] = self.wds.TarWriter(self.pattern % k, encoder=False, mtime=self.mtime)
        self.writers[k].write(sample)
        self.n += 1

    def close(self) -> None:
        for k in sorted(self.writers):
            self.writers[k].close()
            self.post(self.pattern % k)


def convert(fmt: str, source: str, out_pattern: str, media_root: str | None = None, maxcount: int = 10000,
            maxsize: int = 1_000_000_000, resize: int | None = None, log=print,
            adapters: Mapping[str, str | type] | None = None, shards: int | None = None) -> dict:
    """Convert SOURCE in layout ``fmt`` into shards named by ``out_pattern`` (``%d``-style); -> the summary.

    ``adapters``: modality name -> adapter class (or its ``pkg.module.Class`` path), added to the built-in and
    installed ones; their placeholders are the markers and their extensions the media allowed.
    ``shards``: write exactly this many shards (fewer only if there are fewer samples), dealing the samples
    round-robin; ``maxcount`` and ``maxsize`` are then not used. Fewer than two shards written is warned about:
    the data loader gives each worker of each rank whole shards."""
    import webdataset as wds

    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    if shards is not None and shards < 1:
        raise ValueError(f"--shards must be at least 1, got {shards}")
    try:
        if out_pattern % 0 == out_pattern % 1:
            raise TypeError
    except TypeError:
        raise ValueError(f"OUT_PATTERN needs a shard number, e.g. out/train-%06d.tar (got {out_pattern!r})") from None
    known = resolve(adapters)
    marks = markers(known)
    root = media_root if media_root is not None else (source if os.path.isdir(source) else os.path.dirname(source))
    media, summary, keys, writer = Media(root or ".", resize, accepted_extensions(known)), Summary(fmt, source), set(), None
    try:
        for index, (where, row) in enumerate(iter_rows(source)):
            key = None
            try:
                if isinstance(row, Skip):
                    raise row
                if not isinstance(row, dict):
                    raise Skip(BROKEN_JSON, f"a record is {type(row).__name__}, not an object")
                cand = FORMATS[fmt](row, marks)
                key = make_key(cand.get("id"), fmt, index)
                if key in keys:
                    raise Skip(DUPLICATE, f"key {key} was already written")
                sample, added = build(cand, key, media, marks)
            except Skip as s:
                detail = s.detail
                if fmt == "jsonl" and isinstance(row, dict):  # a misspelt media key loses the row's media
                    note = unknown_jsonl_keys(row, marks)
                    detail = f"{detail}; {note}" if detail and note else detail or note
                summary.skip(s.reason, where, key, detail)
                continue
            except Exception as e:  # a bad record never stops the run
                summary.skip("unexpected error", where, key, f"{type(e).__name__}: {str(e)[:200]}")
                continue
            if writer is None:  # opened on the first good sample; errors writing the output do stop the run
                os.makedirs(os.path.dirname(os.path.abspath(out_pattern % 0)), exist_ok=True)
                mtime = int(time.time())  # a float mtime costs a pax header per member
                writer = (RoundRobinWriter(out_pattern, shards, summary.shards.append, mtime) if shards else
                          wds.ShardWriter(out_pattern, maxcount=maxcount, maxsize=maxsize, verbose=0,
                                          post=summary.shards.append, encoder=False, mtime=mtime))
            writer.write(sample)
            keys.add(key)
            summary.written += 1
            summary.markers_added += added
    finally:
        if writer is not None:
            writer.close()
    if summary.written and len(summary.shards) < MIN_SHARDS:
        summary.warnings.append(
            f"{summary.written} sample(s) went into {len(summary.shards)} shard: data workers x ranks need at least "
            "that many shards to all be busy (a worker reads whole shards); pass --shards N, N = "
            "data.num_workers x GPUs or a multiple of it")
    result = summary.as_dict()
    if log:
        log(report(result))
    return result
