"""The sample schema of a shard, and its validation.

``KEY.json`` holds the text::

    {"prompt": "<image>\\nWhat is shown?"  |  [{"role": "user", "content": ...}, ...],
     "system": "optional system message",
     "chosen": "..." | [{"role": "assistant", "content": ...}],
     "rejected": "..." | [...]}

Unpaired samples (KTO) carry ``"completion": "..."`` and ``"label": true|false`` (desirable or not)
instead of chosen/rejected. ``messages`` is accepted for ``prompt``. Media sit beside it as ``KEY.<ext>`` or, for several items of
one modality, ``KEY.0.<ext>``, ``KEY.1.<ext>``, ... in prompt order. Each adapter claims its extensions;
anything unclaimed is never decoded (so a planted pickle stays bytes).
"""
from __future__ import annotations

import json

from modalities import BadSample

RESPONSES = ("chosen", "rejected")


def _text(value, field: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        content = value[0].get("content")
        if isinstance(content, str):
            return content
    raise BadSample(f"field {field!r} must be a string or one assistant message")


def _messages(record: dict) -> list[dict]:
    prompt = record.get("prompt", record.get("messages"))
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt):
        messages = [{"role": str(m.get("role", "")), "content": m.get("content")} for m in prompt]
        if any(not isinstance(m["content"], str) for m in messages):
            raise BadSample("every prompt message needs a string 'content'")
    else:
        raise BadSample("missing 'prompt' (a string or a list of messages)")
    if isinstance(record.get("system"), str):
        messages = [{"role": "system", "content": record["system"]}] + messages
    return messages


def parse_record(data: bytes) -> dict:
    """``KEY.json`` bytes -> ``{"messages": [...], "responses": {"chosen": str, "rejected": str}}``, or for
    an unpaired sample ``{"messages": [...], "responses": {"completion": str}, "desirable": bool}``."""
    try:
        record = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadSample("json is not valid UTF-8") from None
    except json.JSONDecodeError as e:
        raise BadSample(f"invalid json: {e.msg} at line {e.lineno}") from None
    if not isinstance(record, dict):
        raise BadSample("json is not an object")
    if "completion" in record and "chosen" not in record:
        if not isinstance(record.get("label"), bool):
            raise BadSample("unpaired sample needs a boolean 'label' (true = desirable)")
        return {"messages": _messages(record), "responses": {"completion": _text(record["completion"], "completion")},
                "desirable": record["label"]}
    missing = [f for f in RESPONSES if f not in record]
    if missing:
        raise BadSample(f"json has no {' or '.join(repr(f) for f in missing)}")
    return {"messages": _messages(record), "responses": {f: _text(record[f], f) for f in RESPONSES}}


def media_fields(sample: dict, extensions: tuple[str, ...]) -> list[tuple[str, str]]:
    """Fields of a raw sample that belong to one adapter, in item order: ``[(field, ext), ...]``.

    ``jpg`` is a single item; ``0.jpg``, ``1.png``, ... are items 0, 1, ... Mixing both is an error.
    """
    found = []
    for field in sample:
        if field.startswith("__"):
            continue
        stem, _, ext = field.rpartition(".")
        ext = (ext or field).lower()
        if ext in extensions:
            found.append((stem, field, ext))
    if len(found) > 1 and any(not stem.isdigit() for stem, _, _ in found):
        raise BadSample(f"several media fields without item numbers: {sorted(f for _, f, _ in found)}")
    found.sort(key=lambda x: int(x[0]) if x[0].isdigit() else -1)
    return [(field, ext) for _, field, ext in found]


def is_unpaired(record: dict) -> bool:
    return "completion" in record["responses"]
