"""The row layouts: one function per source layout, ``(row, markers) -> candidate record``.

``markers`` maps modality name -> its adapter's placeholder (``{"image": "<image>", ...}``); a layout
needs it only to turn a typed content part (``{"type": "image"}``) into text. A candidate is a plain dict,
checked and written by the one shared path in ``run.py``::

    {"id": optional, "messages": [{"role", "content": str}, ...],   # the prompt turns, system included
     "chosen": str, "rejected": str          # preference pair, or for KTO:  "completion": str, "label": bool
                                             # or K responses: "responses": [str, ...] with one of
                                             # "ranking" | "ranks" | "scores" (as the shard schema, schema.py)
     "media": {modality name: [src, ...]},   # src: path str | bytes | {"bytes", "path"}
     "add_markers": bool}                    # prepend missing markers (layouts whose prompts have none)

A bad row raises ``Skip(reason, detail)`` (``reasons.py``).
"""
from __future__ import annotations

from typing import Callable, Mapping

from .reasons import BAD_LABEL, MALFORMED, MISSING_MEDIA, MISSING_PROMPT, MISSING_RESPONSE, NON_UTF8, Skip

Markers = Mapping[str, str]

# The media columns the other tools' layouts use (``images``/``image``, ``videos``, ``audios``), named by the
# built-in modality they hold. Our own jsonl layout also takes ``media``: {any modality name: items}.
TOOL_MODALITIES = ("image", "video", "audio")


# ---- text helpers shared by the layouts ----

def parts_text(parts: list, markers: Markers) -> str:
    """Content parts (``{"type": "text", "text": ...}``, ``{"type": "image"}``, ...) -> text with markers:
    a part whose type is a modality name becomes that modality's placeholder."""
    out = []
    for i, part in enumerate(parts):
        if isinstance(part, str):
            out.append(part)
            continue
        if not isinstance(part, dict):
            raise Skip(MALFORMED, f"content part is {type(part).__name__}")
        kind = part.get("type")
        if kind == "text" or (kind is None and isinstance(part.get("text"), str)):
            out.append(part.get("text") or "")
        elif isinstance(kind, str) and markers.get(kind):
            out.append(markers[kind] + ("\n" if i < len(parts) - 1 else ""))
        else:
            raise Skip(MALFORMED, f"content part of type {kind!r}")
    return "".join(out)


def text(value, field: str, markers: Markers, missing: str = MALFORMED) -> str:
    """A string, a list of content parts, a ``{"content"|"value": ...}`` turn or a list of one such turn."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):  # a binary column holding text
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise Skip(NON_UTF8, f"{field!r} is not valid UTF-8") from None
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict) and (
            "content" in value[0] or "value" in value[0]):
        value = value[0]
    if isinstance(value, dict):
        value = value.get("content", value.get("value"))
        if isinstance(value, str):
            return value
    if isinstance(value, list):
        return parts_text(value, markers)
    if value is None:
        raise Skip(missing, f"no {field!r}")
    raise Skip(MALFORMED, f"{field!r} is {type(value).__name__}, not text")


def turns(messages, field: str, markers: Markers, role_key: str = "role", content_key: str = "content",
          roles: dict | None = None) -> list[dict]:
    """A list of chat turns -> ``[{"role", "content": str}]`` (roles renamed through ``roles``)."""
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise Skip(MISSING_PROMPT, f"{field!r} is not a non-empty list of turns")
    out = []
    for m in messages:
        role = m.get(role_key)
        role = (roles or {}).get(role, role)
        if not isinstance(role, str):
            raise Skip(MALFORMED, f"a turn in {field!r} has no {role_key!r}")
        out.append({"role": role, "content": text(m.get(content_key), f"{field}.{content_key}", markers)})
    return out


def with_system(messages: list[dict], system) -> list[dict]:
    if system is None or system == "":
        return messages
    if not isinstance(system, str):
        raise Skip(MALFORMED, "'system' is not a string")
    return [{"role": "system", "content": system}] + messages


def listed(value) -> list:
    """A media column: None -> [], one item -> [item], a list -> itself."""
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def media_lists(row: dict, single: dict | None = None) -> dict:
    """``images``/``videos``/``audios`` lists, plus single-item columns named in ``single`` {modality: column}."""
    media = {m: listed(row.get(m + "s")) for m in TOOL_MODALITIES}
    for modality, column in (single or {}).items():
        if row.get(column) is not None:
            media[modality] = media[modality] + [row[column]]
    return media


def responses(row: dict, markers: Markers, chosen: str = "chosen", rejected: str = "rejected") -> dict:
    if row.get(chosen) is None or row.get(rejected) is None:
        raise Skip(MISSING_RESPONSE, f"no {chosen!r}" if row.get(chosen) is None else f"no {rejected!r}")
    return {"chosen": text(row[chosen], chosen, markers, MISSING_RESPONSE),
            "rejected": text(row[rejected], rejected, markers, MISSING_RESPONSE)}


RANK_KEYS = ("ranking", "ranks", "scores")


def ranked(row: dict, markers: Markers) -> dict:
    """K responses with one of ``ranking`` (indices, best first), ``ranks`` (lower is better) or ``scores``
    (higher is better), kept as they are: the shard parser (``parse_record``) checks them and names the key."""
    texts = row.get("responses")
    if not isinstance(texts, list):
        raise Skip(MISSING_RESPONSE, f"'responses' must be a list of responses, got {type(texts).__name__}")
    out = {"responses": [text(t, f"responses[{k}]", markers, MISSING_RESPONSE) for k, t in enumerate(texts)]}
    out |= {k: row[k] for k in RANK_KEYS if k in row}
    return out


def kto(completion, label, markers: Markers) -> dict:
    if not isinstance(label, bool):
        raise Skip(BAD_LABEL, f"KTO label must be true or false, got {label!r}")
    return {"completion": text(completion, "completion", markers, MISSING_RESPONSE), "label": label}


def user_prompt(value, field: str) -> list[dict]:
    if not isinstance(value, str) or not value.strip():
        raise Skip(MISSING_PROMPT, f"no {field!r}")
    return [{"role": "user", "content": value}]


# ---- the layouts ----

# The jsonl layout's keys (documented in ``cli.py``'s help and the README); any other key of a row is named in
# the reason when the row is skipped, since a misspelt media key (``img``, ``image_file``) loses its media.
JSONL_TEXT_KEYS = ("id", "prompt", "messages", "system", "chosen", "rejected", "completion", "label", "responses",
                   *RANK_KEYS)
JSONL_KEPT_KEYS = ("chosen_weights", "rejected_weights", "completion_weights", "answer", "choices")
MEDIA_ITEM_KEYS = ("path", "bytes", "file", "url")


def jsonl_media_keys(modalities) -> list[str]:
    """The row keys that hold media in the jsonl layout, for these modality names."""
    return [k for m in modalities for k in (m, m + "s", m + "_path", m + "_paths")] + ["media"]


def unknown_jsonl_keys(row: dict, markers: Markers) -> str:
    """A note naming the keys of a jsonl row that the layout does not read, or ''."""
    known = set(JSONL_TEXT_KEYS) | set(JSONL_KEPT_KEYS) | set(jsonl_media_keys(set(TOOL_MODALITIES) | set(markers)))
    unknown = [k for k in row if k not in known]
    if not unknown:
        return ""
    return (f"unknown key(s) {', '.join(repr(k) for k in unknown[:6])}{' ...' if len(unknown) > 6 else ''} "
            "(media go under images/videos/audios, image/video/audio, <name>_path or media: {NAME: [paths]}; "
            "see --help)")


def _modality_name(key: str, markers: Markers) -> str:
    """``images``/``image_path``/``image_paths`` -> ``image`` when that is a modality; other keys unchanged."""
    for suffix in ("_paths", "_path", "s"):
        if key.endswith(suffix) and key[: -len(suffix)] in set(markers) | set(TOOL_MODALITIES):
            return key[: -len(suffix)]
    return key


def _media_parts(parts: list, markers: Markers) -> dict:
    """``media`` as a list of typed items: ``[{"type": "image", "path": "a.jpg"}, {"type": "video", "video":
    "v.mp4"}, ...]`` -> {modality: [item, ...]} (an item keeps its ``bytes``, else its path)."""
    out: dict[str, list] = {}
    for i, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(kind, str):
            raise Skip(MALFORMED, f"media[{i}] must be an object with a 'type' (a modality name) and a 'path'")
        name = _modality_name(kind, markers)
        value = next((part[k] for k in (name, kind, *MEDIA_ITEM_KEYS) if part.get(k) is not None and k != "type"),
                     None)
        if value is None:
            raise Skip(MISSING_MEDIA, f"media[{i}] ({kind}) has none of {', '.join(('path', 'bytes', name))}")
        out.setdefault(name, []).append({"bytes": value} if isinstance(value, (bytes, bytearray)) else value)
    return out


def from_jsonl(row: dict, markers: Markers) -> dict:
    """Our schema with media as paths: prompt|messages, system, chosen/rejected (or completion/label), and the
    media of any modality NAME (a built-in one or an out-of-tree adapter's) as
    ``NAMEs`` (a list), ``NAME`` / ``NAME_path`` (one path or a list), ``media: {NAME or NAMEs: path or list}``,
    or ``media: [{"type": NAME, "path": ...}, ...]``; an item is a path, or ``{"path": ...}`` / ``{"bytes": ...}``.
    ``chosen_weights``/``rejected_weights``/``completion_weights``, ``answer`` and ``choices`` are kept."""
    prompt = row.get("prompt", row.get("messages"))
    messages = turns(prompt, "prompt", markers) if isinstance(prompt, list) else user_prompt(prompt, "prompt")
    if "responses" in row:  # K responses, ranked or scored
        out = ranked(row, markers)
    else:
        out = kto(row["completion"], row.get("label"), markers) if "completion" in row else responses(row, markers)
    media: dict[str, list] = {}
    names = list(dict.fromkeys([*TOOL_MODALITIES, *markers]))
    for name in names:  # plural list first, then the single item / path keys, in a fixed order
        for key in (name + "s", name, name + "_path", name + "_paths"):
            if row.get(key) is not None:
                media.setdefault(name, []).extend(listed(row[key]))
    extra = row.get("media")
    if extra is not None:
        if isinstance(extra, list):
            extra = _media_parts(extra, markers)
        if not isinstance(extra, dict) or not all(isinstance(k, str) for k in extra):
            raise Skip(MALFORMED, "'media' must be an object {modality name: path or list of paths} or a list of "
                                  "{\"type\": modality name, \"path\": ...} items")
        for key, items in extra.items():
            name = _modality_name(key, markers)
            media[name] = media.get(name, []) + listed(items)
    kept = {k: row[k] for k in JSONL_KEPT_KEYS if k in row}
    return {"id": row.get("id"), "messages": with_system(messages, row.get("system")), "media": media,
            "add_markers": False, "kept": kept, **out}


def _split_implicit(chosen: list, rejected: list) -> tuple[list, list, list]:
    """TRL's implicit-prompt layout: chosen/rejected are whole conversations sharing the prompt as prefix."""
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    return chosen[:n], chosen[n:], rejected[n:]


def from_trl(row: dict, markers: Markers) -> dict:
    """TRL preference (prompt, chosen, rejected) or unpaired (prompt, completion, label); plain text or
    conversational; optional ``images`` (list) / ``image`` column of embedded image structs."""
    prompt = row.get("prompt")
    if prompt is None and isinstance(row.get("chosen"), list) and isinstance(row.get("rejected"), list):
        prompt, chosen, rejected = _split_implicit(row["chosen"], row["rejected"])
        row = {**row, "chosen": chosen, "rejected": rejected}
    messages = turns(prompt, "prompt", markers) if isinstance(prompt, list) else user_prompt(prompt, "prompt")
    if "completion" in row and "chosen" not in row:
        out = kto(row.get("completion"), row.get("label"), markers)
    else:
        out = responses(row, markers)
    media = {"image": listed(row.get("images")) + listed(row.get("image"))}
    return {"id": row.get("id"), "messages": messages, "media": media, "add_markers": True, **out}


LF_ROLES = {"human": "user", "gpt": "assistant", "observation": "tool", "function_call": "assistant"}


def from_llamafactory(row: dict, markers: Markers) -> dict:
    """LLaMA-Factory ranking data: sharegpt (conversations + chosen/rejected turns) or alpaca
    (instruction, input, chosen, rejected; history optional); KTO via ``kto_tag``; images/videos/audios."""
    if "conversations" in row or "messages" in row:
        keys = ("from", "value") if "conversations" in row else ("role", "content")
        messages = turns(row.get("conversations", row.get("messages")), "conversations", markers, *keys,
                         roles=LF_ROLES)
        system = row.get("system")
        if messages[0]["role"] == "system":
            system, messages = messages[0]["content"], messages[1:]
        if "kto_tag" in row:
            if not messages or messages[-1]["role"] != "assistant":
                raise Skip(MISSING_RESPONSE, "KTO conversations must end with a gpt turn")
            out, messages = kto(messages[-1]["content"], row["kto_tag"], markers), messages[:-1]
        else:
            out = responses(row, markers)
        if not messages or messages[-1]["role"] != "user":
            raise Skip(MALFORMED, "the conversation must end with a human turn")
    elif "instruction" in row:
        query = row.get("instruction")
        if not isinstance(query, str) or not query.strip():
            raise Skip(MISSING_PROMPT, "no 'instruction'")
        if isinstance(row.get("input"), str) and row["input"]:
            query = f"{query}\n{row['input']}"
        messages = []
        for pair in row.get("history") or []:
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
                raise Skip(MALFORMED, "'history' must be a list of [query, response] string pairs")
            messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
        messages.append({"role": "user", "content": query})
        system = row.get("system")
        out = kto(row.get("output"), row["kto_tag"], markers) if "kto_tag" in row else responses(row, markers)
    else:
        raise Skip(MISSING_PROMPT, "neither 'conversations' (sharegpt) nor 'instruction' (alpaca)")
    return {"id": row.get("id"), "messages": with_system(messages, system), "media": media_lists(row),
            "add_markers": False, **out}


def from_swift(row: dict, markers: Markers) -> dict:
    """ms-swift: messages (system/user/assistant; the last assistant turn is the chosen reply),
    rejected_response (DPO) or label (KTO), images/videos/audios."""
    messages = turns(row.get("messages"), "messages", markers)
    if messages[-1]["role"] != "assistant":
        raise Skip(MISSING_RESPONSE, "the last message must be the assistant reply")
    reply, messages = messages[-1]["content"], messages[:-1]
    if row.get("rejected_response") is not None:
        out = {"chosen": reply,
               "rejected": text(row["rejected_response"], "rejected_response", markers, MISSING_RESPONSE)}
    elif "label" in row:
        out = kto(reply, row["label"], markers)
    else:
        raise Skip(MISSING_RESPONSE, "no 'rejected_response' (nor KTO 'label')")
    if not messages or messages[-1]["role"] != "user":
        raise Skip(MISSING_PROMPT, "no user turn before the assistant reply")
    return {"id": row.get("id"), "messages": with_system(messages, row.get("system")), "media": media_lists(row),
            "add_markers": False, **out}


def from_rlaifv(row: dict, markers: Markers) -> dict:
    """RLAIF-V / RLHF-V: image ({"bytes", "path"} struct, raw bytes or path), question, chosen, rejected."""
    media = {"image": listed(row.get("image"))}
    if not media["image"]:
        raise Skip(MISSING_MEDIA, "no 'image'")
    prompt = user_prompt(text(row.get("question"), "question", markers, MISSING_PROMPT), "question")
    return {"id": row.get("id"), "messages": prompt, "media": media, "add_markers": True,
            **responses(row, markers)}


def from_align_anything(row: dict, markers: Markers) -> dict:
    """align-anything: question (TI2T) or prompt (TA2T/TV2T); image / video_path|video / audio_path|audio;
    response_1, response_2, overall_response (1 or 2: the better one)."""
    better = row.get("overall_response")
    if isinstance(better, str) and better.strip().isdigit():
        better = int(better)
    if isinstance(better, float) and better.is_integer():
        better = int(better)
    if better not in (1, 2) or isinstance(better, bool):
        raise Skip(BAD_LABEL, f"overall_response must be 1 or 2, got {better!r}")
    prompt = row.get("question") if row.get("question") is not None else row.get("prompt")
    prompt = text(prompt, "question", markers, MISSING_PROMPT)
    pair = responses(row, markers, f"response_{better}", f"response_{3 - better}")
    media = {"image": listed(row.get("image")),
             "video": listed(row.get("video_path", row.get("video"))),
             "audio": listed(row.get("audio_path", row.get("audio")))}
    return {"id": row.get("id"), "messages": user_prompt(prompt, "question"), "media": media,
            "add_markers": True, **pair}


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x


def completion_score(c: dict, where: str) -> float:
    """An UltraFeedback completion's score: ``overall_score``; else the mean of its ``ratings`` (a list or a
    dict of numbers), of ``fine-grained_score``, or of its ``annotations``' per-aspect ``Rating``s (UltraFeedback's
    raw layout; "N/A" ratings left out)."""
    if _number(c.get("overall_score")):
        return float(c["overall_score"])
    ratings = c.get("ratings")
    if isinstance(ratings, dict):
        ratings = list(ratings.values())
    if ratings is None and _number(c.get("fine-grained_score")):
        return float(c["fine-grained_score"])
    if ratings is None and isinstance(c.get("annotations"), dict):
        ratings = [a.get("Rating") for a in c["annotations"].values() if isinstance(a, dict)]
    if isinstance(ratings, list):
        nums = [float(r) for r in ratings if _number(r) or (isinstance(r, str) and r.strip().isdigit())]
        if nums:
            return sum(nums) / len(nums)
    raise Skip(BAD_LABEL, f"{where} has no 'overall_score' and no numeric 'ratings', 'fine-grained_score' or "
                          "annotation 'Rating'")


def from_ultrafeedback(row: dict, markers: Markers) -> dict:
    """UltraFeedback-style scored completions (openbmb/UltraFeedback and its multimodal peers): instruction (or
    prompt / question), ``completions``: [{"response" (or "text" / "content"), "overall_score" or "ratings" or
    "annotations": {aspect: {"Rating"}}}, ...], images/videos/audios (markers prepended where the prompt has
    none). -> K responses with ``scores``: every completion kept, none binarised."""
    prompt = next((row[k] for k in ("instruction", "prompt", "question") if row.get(k) is not None), None)
    messages = turns(prompt, "prompt", markers) if isinstance(prompt, list) else \
        user_prompt(text(prompt, "instruction", markers, MISSING_PROMPT), "instruction")
    completions = row.get("completions")
    if not isinstance(completions, list) or not all(isinstance(c, dict) for c in completions):
        raise Skip(MISSING_RESPONSE, "'completions' must be a list of {'response', 'overall_score' or 'ratings'}")
    texts, scores = [], []
    for k, c in enumerate(completions):
        where = f"completions[{k}]"
        value = next((c[f] for f in ("response", "text", "content") if c.get(f) is not None), None)
        texts.append(text(value, f"{where}.response", markers, MISSING_RESPONSE))
        scores.append(completion_score(c, where))
    return {"id": row.get("id"), "messages": with_system(messages, row.get("system")), "media": media_lists(row),
            "add_markers": True, "responses": texts, "scores": scores}


FORMATS: dict[str, Callable[[dict, Markers], dict]] = {
    "jsonl": from_jsonl, "trl": from_trl, "llamafactory": from_llamafactory, "swift": from_swift,
    "rlaifv": from_rlaifv, "align_anything": from_align_anything, "ultrafeedback": from_ultrafeedback}
