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

Weighted spans (DDPO, RLHF-V): any response may carry ``"<response>_weights"`` (``chosen_weights``,
``rejected_weights``, ``completion_weights``), a list of ``{"start": int, "end": int, "weight": number}``.
``start``/``end`` are character offsets (Python ``str`` indices, i.e. Unicode code points, end exclusive)
into that response's text (the ``content`` when the response is given as one assistant message). A token
overlapping a span is weighted by ``weight`` in the response's log-likelihood; every other token weighs 1.
Spans must satisfy ``0 <= start < end <= len(text)``, must not overlap one another, and ``weight`` must be
a finite number >= 0; anything else (or weights for a response the sample does not have, or unknown keys in
a span) makes the sample bad. See ``docs/data-format.md``.

K responses per prompt (ranked or scored data): ``"responses": [r_0, ..., r_{K-1}]`` (K >= 2, each a string
or one assistant message) with exactly one of ``"ranking"`` (response indices, best first: a permutation of
0..K-1), ``"ranks"`` (one number per response, lower is better, ties allowed) or ``"scores"`` (one finite number
per response, higher is better, ties allowed). They parse to responses ``response_0`` ... ``response_{K-1}`` and
``"ranks"``: dense ranks, 0 the best. Lengths that differ, fewer than two responses, all tied (nothing to
prefer), or ``chosen``/``rejected`` beside ``responses`` make the sample bad, with a reason naming the key.

For evaluation, a sample may carry its reference ``"answer"`` (a string: generation accuracy matches the
model's answer against it) and ``"choices"`` (candidate responses, one of which equals or contains the
answer: likelihood-choice accuracy picks the one the model finds most likely).
"""
from __future__ import annotations

import json
import math
import re

from modalities import BadSample

RESPONSES = ("chosen", "rejected")
UNPAIRED = ("completion",)
RANK_KEYS = ("ranking", "ranks", "scores")  # K-response samples: exactly one of these orders the responses


def response_name(k: int) -> str:
    """The name of a K-response sample's k-th response (its slot and ``index`` entry)."""
    return f"response_{k}"


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _dense_ranks(values: list[float]) -> list[int]:
    """Dense ranks, 0 for the smallest value, equal values sharing a rank."""
    order = {v: r for r, v in enumerate(sorted(set(values)))}
    return [order[v] for v in values]


def parse_ranked(record: dict) -> tuple[dict[str, str], list[int]]:
    """A K-response sample's ``responses`` and ``ranking``/``ranks``/``scores`` -> ({``response_k``: text},
    dense ranks with 0 the best); ``BadSample`` naming the key otherwise."""
    texts = record["responses"]
    if not isinstance(texts, list):
        raise BadSample("'responses' must be a list of responses (strings or one assistant message each)")
    if len(texts) < 2:
        raise BadSample(f"'responses' needs at least 2 responses to rank, got {len(texts)}")
    both = [k for k in ("chosen", "rejected", "completion") if k in record]
    if both:
        raise BadSample(f"'responses' and {both[0]!r} in one sample: give a ranked list or a pair, not both")
    given = [k for k in RANK_KEYS if k in record]
    if len(given) != 1:
        raise BadSample("'responses' needs exactly one of 'ranking' (indices, best first), 'ranks' (lower is "
                        f"better) or 'scores' (higher is better); got {given or 'none'}")
    key, order = given[0], record[given[0]]
    if not isinstance(order, list) or len(order) != len(texts):
        n = len(order) if isinstance(order, list) else type(order).__name__
        raise BadSample(f"{key!r} has {n} entries but 'responses' has {len(texts)}")
    if key == "ranking":
        if not all(_is_int(i) for i in order) or sorted(order) != list(range(len(texts))):
            raise BadSample(f"'ranking' must list each response index 0..{len(texts) - 1} once, best first; "
                            f"got {order}")
        ranks = [0] * len(texts)
        for r, i in enumerate(order):
            ranks[i] = r
    else:
        if not all(_number(x) for x in order):
            raise BadSample(f"{key!r} must hold finite numbers, got {order}")
        ranks = _dense_ranks([float(x) if key == "ranks" else -float(x) for x in order])
    if max(ranks) == 0:
        raise BadSample(f"{key!r} ties every response ({order}): nothing to prefer")
    responses = {response_name(k): _text(t, f"responses[{k}]") for k, t in enumerate(texts)}
    return responses, ranks
WEIGHTS_SUFFIX = "_weights"
SPAN_KEYS = ("start", "end", "weight")


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


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _spans(value, field: str, text: str) -> list[tuple[int, int, float]]:
    """Validate one ``<response>_weights`` list -> ``[(start, end, weight), ...]`` sorted by start."""
    if not isinstance(value, list):
        raise BadSample(f"field {field!r} must be a list of {{'start', 'end', 'weight'}} spans")
    spans = []
    for i, span in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(span, dict):
            raise BadSample(f"{where} must be an object with 'start', 'end' and 'weight'")
        missing = [k for k in SPAN_KEYS if k not in span]
        if missing:
            raise BadSample(f"{where} has no {' or '.join(repr(k) for k in missing)}")
        unknown = sorted(set(span) - set(SPAN_KEYS))
        if unknown:
            raise BadSample(f"{where} has unknown key(s) {unknown}; a span has 'start', 'end', 'weight'")
        start, end, weight = span["start"], span["end"], span["weight"]
        if not _is_int(start) or not _is_int(end):
            raise BadSample(f"{where}: 'start' and 'end' must be integers, got {start!r} and {end!r}")
        if not 0 <= start < end <= len(text):
            raise BadSample(f"{where}: span [{start}, {end}) is empty or outside the response "
                            f"(0 <= start < end <= {len(text)} characters)")
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not math.isfinite(weight) or weight < 0:
            raise BadSample(f"{where}: 'weight' must be a finite number >= 0, got {weight!r}")
        spans.append((start, end, float(weight)))
    spans.sort()
    for (s0, e0, _), (s1, e1, _) in zip(spans, spans[1:]):
        if s1 < e0:
            raise BadSample(f"field {field!r}: spans [{s0}, {e0}) and [{s1}, {e1}) overlap")
    return spans


def _weights(record: dict, responses: dict[str, str]) -> dict[str, list[tuple[int, int, float]]]:
    out = {}
    for field in record:
        if not (isinstance(field, str) and field.endswith(WEIGHTS_SUFFIX)):
            continue
        name = field[: -len(WEIGHTS_SUFFIX)]
        if name not in RESPONSES + UNPAIRED:
            continue  # not ours (e.g. a field another tool keeps); left alone as other unknown fields are
        if name not in responses:
            raise BadSample(f"field {field!r} is given but the sample has no {name!r} response")
        spans = _spans(record[field], field, responses[name])
        if spans:
            out[name] = spans
    return out


def parse_record(data: bytes, prompt_only: bool = False) -> dict:
    """``KEY.json`` bytes -> ``{"messages": [...], "responses": {"chosen": str, "rejected": str}}``, or for
    an unpaired sample ``{"messages": [...], "responses": {"completion": str}, "desirable": bool}``, or for a
    K-response sample ``{"messages": [...], "responses": {"response_0": str, ...}, "ranks": [int, ...]}``.
    ``prompt_only`` (online training): a sample with a prompt and none of the responses parses to
    ``"responses": {}`` (its responses are sampled from the policy) instead of being bad.

    A sample with weighted spans also gets ``"weights": {response: [(start, end, weight), ...]}`` (sorted,
    validated; only responses with at least one span appear); a sample without has no ``"weights"`` key."""
    try:
        record = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadSample("json is not valid UTF-8") from None
    except json.JSONDecodeError as e:
        raise BadSample(f"invalid json: {e.msg} at line {e.lineno}") from None
    if not isinstance(record, dict):
        raise BadSample("json is not an object")
    if "responses" in record:
        responses, ranks = parse_ranked(record)
        out = {"messages": _messages(record), "responses": responses, "ranks": ranks}
    elif "completion" in record and "chosen" not in record:
        if not isinstance(record.get("label"), bool):
            raise BadSample("unpaired sample needs a boolean 'label' (true = desirable)")
        responses = {"completion": _text(record["completion"], "completion")}
        out = {"messages": _messages(record), "responses": responses, "desirable": record["label"]}
    elif prompt_only and not any(f in record for f in RESPONSES):
        out = {"messages": _messages(record), "responses": {}}
    else:
        missing = [f for f in RESPONSES if f not in record]
        if missing:
            raise BadSample(f"json has no {' or '.join(repr(f) for f in missing)}")
        out = {"messages": _messages(record), "responses": {f: _text(record[f], f) for f in RESPONSES}}
    weights = _weights(record, out["responses"])
    if weights:
        out["weights"] = weights
    out |= _reference_answer(record)
    return out


_PUNCT = re.compile(r"[^\w\s]")
_ARTICLES = {"a", "an", "the"}


def normalize_answer(text: str) -> list[str]:
    """Words of an answer for matching: lower case, punctuation and articles dropped (SQuAD's normalisation)."""
    return [w for w in _PUNCT.sub(" ", text.lower()).split() if w not in _ARTICLES]


def answer_in(answer: str, response: str) -> bool:
    """The normalised answer's words appear, in order and contiguous, among the response's."""
    a, r = normalize_answer(answer), normalize_answer(response)
    return bool(a) and any(r[i:i + len(a)] == a for i in range(len(r) - len(a) + 1))


def _reference_answer(record: dict) -> dict:
    """Optional ``answer`` (the reference answer, for generation accuracy) and ``choices`` (candidate
    responses for likelihood-choice accuracy; exactly one must equal or contain the answer)."""
    out = {}
    if "answer" in record:
        if not isinstance(record["answer"], str) or not normalize_answer(record["answer"]):
            raise BadSample("'answer' must be a non-empty string")
        out["answer"] = record["answer"]
    if "choices" in record:
        choices = record["choices"]
        if not (isinstance(choices, list) and len(choices) >= 2 and all(isinstance(c, str) and c for c in choices)):
            raise BadSample("'choices' must be a list of at least two non-empty strings")
        if "answer" not in out:
            raise BadSample("'choices' needs an 'answer' naming the right one")
        right = [i for i, c in enumerate(choices) if normalize_answer(c) == normalize_answer(out["answer"])] or \
                [i for i, c in enumerate(choices) if answer_in(out["answer"], c)]
        if len(right) != 1:
            raise BadSample(f"'answer' {out['answer']!r} must match exactly one of 'choices' "
                            f"(it matches {len(right)})")
        out["choices"], out["correct_choice"] = list(choices), right[0]
    return out


def media_fields(sample: dict, extensions: tuple[str, ...]) -> list[tuple[str, str]]:
    """Fields of a raw sample that belong to one adapter, in item order: ``[(field, ext), ...]``.

    ``jpg`` is a single item; ``0.jpg``, ``1.png``, ... are items 0, 1, ... Mixing both is an error.

    When the sample also holds a member that no known adapter reads (``KEY.heic``) and the prompt has more
    of this adapter's markers than the sample has items for it, the sample is refused here, naming that
    member: the count check after decoding cannot see members that no adapter took (``ignored_members``).
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
    _check_ignored(sample, extensions, len(found))
    return [(field, ext) for _, field, ext in found]


# ---- members no adapter reads, named in the reason when the prompt's markers go short ----

NOT_MEDIA = ("json",)  # members that are never media items
_KNOWN: dict | None = None


def _known_adapters() -> dict:
    """What the registered adapters (built-in and ``anyalign.modalities`` entry points) read, from their class
    attributes: ``{"placeholders": {extensions tuple: {placeholder, ...}}, "reads": {placeholder: extensions and
    container extensions}, "all": every extension any of them reads}``. Built once per process."""
    global _KNOWN
    if _KNOWN is None:
        from modalities.registry import ADAPTERS, load_entry_points

        try:
            classes = list(load_entry_points().values())
        except Exception:  # a broken installed entry point: the built-in adapters only (the run reports it)
            classes = list(ADAPTERS.values())
        placeholders, reads, every = {}, {}, set()
        for cls in classes:
            own = tuple(e.lower() for e in cls.extensions)
            containers = tuple(e.lower() for e in cls.container_extensions)
            every.update(own + containers)
            if cls.placeholder and own:
                placeholders.setdefault(own, set()).add(cls.placeholder)
                reads.setdefault(cls.placeholder, set()).update(own + containers)
        _KNOWN = {"placeholders": placeholders, "reads": reads, "all": frozenset(every)}
    return _KNOWN


def _ext(field: str) -> str:
    return field.rpartition(".")[2].lower()


def ignored_members(sample: dict, read: set[str] | frozenset[str]) -> list[str]:
    """Members of a raw sample that would not be decoded: not ``KEY.json`` and no extension in ``read``."""
    return [f for f in sample if not f.startswith("__") and f not in NOT_MEDIA and _ext(f) not in read]


def describe_ignored(sample: dict, fields: list[str], read_by: dict[str, str] | None = None) -> str:
    """``KEY.x.heic (no adapter reads .heic), ...``; ``read_by``: extension -> the adapter that would read it
    (for a member whose adapter the run does not have)."""
    key = sample.get("__key__", "KEY")
    out = []
    for f in fields:
        ext = _ext(f)
        why = (f"read by the {read_by[ext]} adapter, which this run does not have" if read_by and ext in read_by
               else f"no adapter reads .{ext}")
        out.append(f"{key}.{f} ({why})")
    return ", ".join(out)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def marker_shortfall(marker: str, modality: str, markers: int, items: int, ignored: str = "") -> str:
    """The reason for a prompt whose markers and items do not match, naming what was ignored, if anything:
    ``prompt has 1 <image> placeholder but the sample has 0 image items; ignored member(s): ...``."""
    text = (f"prompt has {_plural(markers, marker + ' placeholder')} but the sample has "
            f"{_plural(items, modality + ' item')}")
    return f"{text}; ignored member(s): {ignored}" if ignored else text


def _check_ignored(sample: dict, extensions: tuple[str, ...], have: int) -> None:
    known = _known_adapters()
    ignored = ignored_members(sample, known["all"])
    if not ignored or "json" not in sample:  # the common case costs one pass over the member names
        return
    marks = known["placeholders"].get(tuple(e.lower() for e in extensions), set())
    if len(marks) != 1:  # not a registered adapter's extensions (or ambiguous): the count check reports it
        return
    (marker,) = marks
    if not have:  # the soundtrack of a video container counts too
        have = sum(_ext(f) in known["reads"][marker] for f in sample if not f.startswith("__"))
    try:
        record = json.loads(sample["json"].decode("utf-8"))
        messages = _messages(record)
    except Exception:  # parse_record reports a broken record
        return
    count = sum(m["content"].count(marker) for m in messages)
    if count > have:
        raise BadSample(marker_shortfall(marker, marker.strip("<>"), count, have, describe_ignored(sample, ignored)))


def is_unpaired(record: dict) -> bool:
    return "completion" in record["responses"]


def best_and_worst(ranks: list) -> tuple[int, int]:
    """A K-response sample's best (the first of rank 0) and worst (the last of the largest rank) response."""
    worst = max(ranks)
    return ranks.index(min(ranks)), len(ranks) - 1 - ranks[::-1].index(worst)


def own_response(ex: dict, response: str) -> str | None:
    """The name of the example's response that a sequence kind's ``response`` means: itself for a pair or an
    unpaired sample; for a K-response sample ``chosen`` is its best and ``rejected`` its worst response."""
    if "ranks" in ex and response in ("chosen", "rejected"):
        return response_name(best_and_worst(ex["ranks"])[response == "rejected"])
    return response if response in ex["responses"] else None
