"""``python -m anyalign bdhs``: Bias-Driven Hallucination Sampling, annotation-free rejected responses.

    python -m anyalign bdhs --config configs/tools/video_bdhs.yaml
    python -m anyalign bdhs --config configs/tools/video_bdhs.yaml --model runs/sft/export --output data/bdhs

After Amirloo et al., "Understanding Alignment in Multimodal LLMs: A Comprehensive Study" (Apple, 2024; arXiv
2407.02477, Sec. 3.4 and Algorithm 1 in App. E.3): the model answers again with its access to the media restricted
(attention to a random share of the media tokens is blocked inside the LM, so its language prior takes over). Each
sentence of the chosen response is cut at a random point and completed by the model after the chosen response's own
earlier sentences, so the style stays close; a leading yes/no may be swapped first. A candidate too similar to the
chosen response (a pluggable similarity, ``similarity.class_path``) is resampled with a new mask and new split
points, up to ``max_tries`` times; by default the last try is a whole response without the chosen text, kept
whatever its similarity. Every modality an adapter reads works alike: the blocked positions are the placeholder
positions of the prompt, whatever their modality.

Input shards hold prompt + chosen (+ media; a ``rejected`` is ignored and replaced). Each output shard has the
input shard's name; every member of a sample is copied byte for byte except ``KEY.json``, whose ``rejected`` is
set (its other fields kept). A sample that cannot be read is left out and reported (and, with ``exhausted: drop``,
one whose every candidate was too similar). ``bdhs.json`` beside the shards holds the settings, the per-sample
tries and similarities, and the histogram of tries.

Config keys (a YAML file; any key also as ``--key value``): ``model`` (an export) or ``model_config`` (a training
config: the model it builds, optionally with ``ckpt_path``), ``input`` (shards: paths or brace patterns),
``output`` (a directory), ``mask_fraction``, ``prefix_fraction``, ``sentences``, ``swap_yes_no``, ``threshold``,
``max_tries``, ``exhausted`` (``unguided``, ``drop`` or ``keep``), ``similarity``, ``temperature``, ``top_p``,
``stop``, ``max_new_tokens``, ``batch_size``, ``seed``. Defaults and their sources: docs/bdhs.md.
"""
from __future__ import annotations

import argparse
import importlib
import io
import json
import math
import os
import re
import sys
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from modalities.base import BadSample

from .commands import ConfigError

# The paper's values where it gives one (arXiv 2407.02477v1, Sec. 3.4 and App. E.3); see docs/bdhs.md.
DEFAULTS = {
    "mask_fraction": 0.99,       # rho_th = 0.99 (Sec. 3.4.1, footnote 2: final results)
    "prefix_fraction": "random",  # a random split position in each sentence (Sec. 3.4.2; Algorithm 1, line 14)
    "sentences": True,           # each sentence of the chosen response completed on its own (Sec. 3.4.2)
    "swap_yes_no": 0.5,          # a leading yes/no swapped with probability 0.5 (Sec. 3.4.2)
    "threshold": 0.97,           # epsilon_s = 0.97, cosine of all-mpnet-base-v2 embeddings (Sec. 3.4.3, footnote 3)
    "max_tries": 5,              # N_BDHS = 5 (Sec. 3.4.4, App. E.2)
    "exhausted": "unguided",     # the last try is a full response without the chosen text, kept (Algorithm 1, l. 5-7)
    "temperature": 1.0, "top_p": 0.9,  # the paper does not give its sampling settings
    "stop": [], "max_new_tokens": 48, "batch_size": 8, "seed": 0,
    "similarity": {"class_path": "anyalign.bdhs.TokenOverlap"},  # the paper's model needs a download: opt-in
}
EXHAUSTED = ("unguided", "drop", "keep")


# ------------------------------------------------------------------------------------------ similarity tests
class Similarity:
    """``(references, candidates) -> [similarity in [0, 1]]``, pairwise. ``bind(model)`` is called once with the
    generating model before use (a test that needs nothing ignores it)."""

    def bind(self, model) -> None:
        pass

    def __call__(self, references: list[str], candidates: list[str]) -> list[float]:
        raise NotImplementedError


_WORD = re.compile(r"\w+")


class TokenOverlap(Similarity):
    """Word-multiset F1 of the two texts (lower-cased words): 1 for the same words, 0 for none in common. Needs
    no model and no download (the default)."""

    def __call__(self, references, candidates):
        out = []
        for a, b in zip(references, candidates):
            wa, wb = Counter(_WORD.findall(a.lower())), Counter(_WORD.findall(b.lower()))
            if not wa or not wb:
                out.append(1.0 if not wa and not wb else 0.0)
                continue
            common = sum((wa & wb).values())
            out.append(2 * common / (sum(wa.values()) + sum(wb.values())))
        return out


class HiddenStates(Similarity):
    """Cosine of the generating LM's mean-pooled last hidden states of the two texts (text only, no media). Needs
    no download; meaningful as far as the model's own representations are."""

    def bind(self, model) -> None:
        self.model = model

    @torch.no_grad()
    def _embed(self, texts: list[str]) -> torch.Tensor:
        tok, lm = self.model.tokenizer, self.model.lm
        device = next(lm.parameters()).device
        out = []
        for t in texts:
            ids = tok(t or " ", add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
            hidden = lm.get_decoder()(input_ids=ids).last_hidden_state[0]
            out.append(hidden.float().mean(0))
        return torch.stack(out)

    def __call__(self, references, candidates):
        a, b = self._embed(references), self._embed(candidates)
        return torch.nn.functional.cosine_similarity(a, b, dim=-1).clamp(0, 1).tolist()


class SentenceEmbedding(Similarity):
    """Cosine of a sentence-embedding model's vectors (``pip install sentence-transformers``; ``model``: a local
    directory or hub id, e.g. ``sentence-transformers/all-MiniLM-L6-v2``: named by you, downloaded only then)."""

    def __init__(self, model: str, device: str | None = None):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise ConfigError("similarity SentenceEmbedding needs `pip install sentence-transformers`") from None
        self.encoder = SentenceTransformer(model, device=device)

    def __call__(self, references, candidates):
        a = self.encoder.encode(references, convert_to_tensor=True, normalize_embeddings=True)
        b = self.encoder.encode(candidates, convert_to_tensor=True, normalize_embeddings=True)
        return (a * b).sum(-1).clamp(0, 1).tolist()


def build_similarity(spec: dict) -> Similarity:
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise ConfigError("similarity must be {class_path: ..., init_args: {...}}")
    module, _, name = spec["class_path"].rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ConfigError(f"similarity.class_path {spec['class_path']!r} cannot be imported") from None
    return cls(**(spec.get("init_args") or {}))


# ------------------------------------------------------------------------------------------------ sampling
@dataclass
class Outcome:
    rejected: str
    tries: int
    similarity: float
    accepted: bool               # False: every try was too similar (exhausted: drop/keep); unguided: always True
    prefix: str = ""             # the chosen text the accepted candidate continues (sentence heads joined by " | ")
    guided: bool = True          # False: the unguided last try (exhausted: unguided)
    history: list = field(default_factory=list)  # (candidate, similarity) per try


def media_positions(model, ids: list[int]) -> list[int]:
    """Indices of the prompt tokens that are media placeholders (spliced with the media's embeddings)."""
    media_ids = set(model.media_token_ids.values())
    return [i for i, t in enumerate(ids) if t in media_ids]


def choose_blocked(positions: list[int], fraction: float, gen: torch.Generator) -> list[int]:
    """Each position blocked on its own with probability ``fraction`` (the paper's eq. 6: token i stays visible
    iff u_i >= rho_th, u_i ~ U(0, 1), rho_th = ``fraction``): all for 1.0, none for 0.0."""
    if not positions:
        return []
    u = torch.rand(len(positions), generator=gen)
    return [p for p, ui in zip(positions, u.tolist()) if ui < fraction]


_SENTENCE = re.compile(r"\S.*?(?:[.!?]+(?=\s|$)|\Z)", re.S)
_YES_NO = re.compile(r"^(\s*)(Yes|yes|No|no)\b")
_SWAP = {"Yes": "No", "yes": "no", "No": "Yes", "no": "yes"}


def sentences(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of each sentence of ``text`` (ends after ``.``, ``!`` or ``?`` followed by a space or the
    end; the rest of the text is the last sentence)."""
    return [m.span() for m in _SENTENCE.finditer(text)]


def split_point(text: str, fraction, gen: torch.Generator | None = None) -> str:
    """The head of ``text`` a candidate continues: its first k words with their original spacing. ``fraction``
    a number: k = floor(fraction * words); ``"random"`` (the paper): k uniform in 0 .. words - 1, so at least the
    last word is generated."""
    spans = [m.span() for m in re.finditer(r"\S+", text)]
    if fraction == "random":
        k = int(torch.randint(len(spans), (), generator=gen)) if spans else 0
    else:
        k = int(math.floor(float(fraction) * len(spans)))
    return text[: spans[k - 1][1]] if k > 0 else ""


def chosen_prefix(chosen: str, fraction) -> str:
    """The first ``floor(fraction * words)`` words of the chosen response, with their original spacing."""
    return split_point(chosen, fraction)


def swap_yes_no(text: str, probability: float, gen: torch.Generator) -> str:
    """With ``probability``, a leading Yes/yes/No/no replaced by its counterpart (the paper's heuristic for short
    answers that the rest of the sentence would give away)."""
    m = _YES_NO.match(text)
    if not m or probability <= 0 or float(torch.rand((), generator=gen)) >= probability:
        return text
    return text[: m.start(2)] + _SWAP[m.group(2)] + text[m.end(2):]


def _cut_after(text: str, start: int, stop: list[str]) -> str:
    """``text`` up to and including the first stop string found after ``start`` (the prefix is never cut)."""
    ends = [text.index(s, start) + len(s) for s in stop if s and s in text[start:]]
    return text[: min(ends)] if ends else text


def _plan(item: dict, settings: dict, gen: torch.Generator) -> list[tuple[str, str]]:
    """One guided try of one sample: per piece to generate, ``(context, head)``: the chosen text before the piece
    (kept verbatim) and the head of the piece the model continues. ``sentences``: one piece per sentence of the
    chosen response, each after the chosen response's own earlier sentences (the paper); else the whole response
    is one piece. Split points (and the yes/no swap) are drawn again on every try."""
    chosen = item["chosen"]
    spans = sentences(chosen) if settings.get("sentences", True) else [(0, len(chosen))]
    spans = spans or [(0, len(chosen))]
    plan = []
    for s, e in spans:
        piece = swap_yes_no(chosen[s:e], float(settings.get("swap_yes_no", 0.0)), gen)
        head = split_point(piece, settings["prefix_fraction"], gen)
        plan.append((chosen[:s], head))
    return plan


def _assemble(chosen: str, settings: dict, pieces: list[str]) -> str:
    spans = sentences(chosen) if settings.get("sentences", True) else [(0, len(chosen))]
    spans = spans or [(0, len(chosen))]
    out, last = "", 0
    for (s, e), piece in zip(spans, pieces):
        out += chosen[last:s] + piece
        last = e
    return out + (chosen[last:] if last < len(chosen) and not chosen[last:].strip() else "")


def sample_rejected(model, items: list[dict], settings: dict, similarity: Similarity,
                    gen: torch.Generator, rng: torch.Generator | None) -> list[Outcome]:
    """BDHS for a batch: ``items`` are ``{"prepared": generation.prepare(...), "chosen": str}``. Each try generates
    every piece of the still-open samples together, each sample with its own random blocked media positions
    (drawn again on every try, as are the split points). With ``exhausted: unguided`` and ``max_tries`` > 1 the
    last try generates the whole response without the chosen text and keeps it whatever its similarity (the
    paper's Algorithm 1)."""
    from .generation import GenerationConfig, generate_batch
    tok = model.tokenizer
    user_stop = list(settings.get("stop") or [])
    piece_stop = sorted(set(["."] + user_stop)) if settings.get("sentences", True) else user_stop
    best: list[Outcome | None] = [None] * len(items)
    open_ = list(range(len(items)))
    tries = int(settings["max_tries"])
    for attempt in range(1, tries + 1):
        if not open_:
            break
        unguided = settings.get("exhausted") == "unguided" and tries > 1 and attempt == tries
        rows, owners, plans = [], [], {}
        for i in open_:
            prepared = items[i]["prepared"]
            blocked = choose_blocked(media_positions(model, prepared["ids"]), settings["mask_fraction"], gen)
            plans[i] = [("", "")] if unguided else _plan(items[i], settings, gen)
            for context, head in plans[i]:
                ctx = context + head
                ctx_ids = tok(ctx, add_special_tokens=False)["input_ids"] if ctx else []
                rows.append(({**prepared, "ids": list(prepared["ids"]) + ctx_ids}, blocked, ctx, ctx_ids))
                owners.append(i)
        stop = user_stop if unguided else piece_stop
        cfg = GenerationConfig(settings["max_new_tokens"], settings["temperature"], settings["top_p"], stop,
                               settings["seed"], len(rows))
        out = generate_batch(model, [r[0] for r in rows], cfg, use_cache=True, rng=rng, blocked=[r[1] for r in rows])
        pieces: dict[int, list[str]] = {i: [] for i in open_}
        fresh: dict[int, bool] = {i: False for i in open_}
        for (_, _, ctx, ctx_ids), o, i in zip(rows, out, owners):
            full = tok.decode(ctx_ids + o, skip_special_tokens=True)
            new = full[len(ctx):] if full.startswith(ctx) else tok.decode(o, skip_special_tokens=True)
            new = _cut_after(new, 0, stop)
            fresh[i] = fresh[i] or bool(new.strip())
            head = plans[i][len(pieces[i])][1]
            pieces[i].append(head + new)
        texts = {i: (pieces[i][0].strip() if unguided else _assemble(items[i]["chosen"], settings, pieces[i]))
                 for i in open_}
        sims = similarity([items[i]["chosen"] for i in open_], [texts[i] for i in open_])
        still = []
        for i, sim in zip(open_, sims):
            sim = 1.0 if not fresh[i] else float(sim)  # nothing new said: as similar as can be
            text, prev = texts[i], best[i]
            history = (prev.history if prev else []) + [(text, round(sim, 4))]
            ok = unguided or sim < settings["threshold"]
            prefix = " | ".join(h for _, h in plans[i])
            if ok or prev is None or sim < prev.similarity:  # the accepted one, else the least similar so far
                best[i] = Outcome(text, attempt, sim, ok, prefix, not unguided, history)
            else:
                best[i].tries, best[i].history = attempt, history
            if not ok:
                still.append(i)
        open_ = still
    return best


# ---------------------------------------------------------------------------------------------- shards
def read_tar(path: str):
    """``(key, [(member name, bytes), ...])`` per sample, members in the shard's order."""
    from .data.pipeline import _split_name
    key, members = None, []
    with tarfile.open(path, "r:*") as tar:
        for m in tar:
            if not m.isfile():
                continue
            k, _ = _split_name(m.name)
            if k != key and members:
                yield key, members
                members = []
            key = k
            members.append((m.name, tar.extractfile(m).read()))
    if members:
        yield key, members


def write_tar(path: Path, samples: list[list[tuple[str, bytes]]], mtime: int = 0) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for members in samples:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), mtime, 0o444
                tar.addfile(info, io.BytesIO(data))
    tmp.replace(path)


def with_rejected(members: list[tuple[str, bytes]], rejected: str) -> list[tuple[str, bytes]]:
    out = []
    for name, data in members:
        if name.lower().endswith(".json") and name.rsplit("/", 1)[-1].count(".") == 1:
            record = json.loads(data.decode("utf-8"))
            record["rejected"] = rejected
            record.pop("rejected_weights", None)  # spans of the old rejected text would not fit the new one
            data = json.dumps(record, ensure_ascii=False).encode("utf-8")
        out.append((name, data))
    return out


# ------------------------------------------------------------------------------------------------- driver
def _exists(path: Path | str) -> bool:
    """A path, or for a brace pattern the directory it names."""
    path = str(path)
    return Path(path.split("{")[0]).parent.is_dir() if "{" in path else Path(path).exists()


def _resolve(path: str, base: Path) -> str:
    """Relative paths: the current directory when they exist there, else next to the config or in a directory
    above it, up to the project root (the first holding ``.git`` or ``pyproject.toml``)."""
    if not path or Path(path).is_absolute() or _exists(path):
        return path
    for d in [base, *base.parents]:
        if _exists(d / path):
            return os.path.normpath(d / path)
        if (d / ".git").exists() or (d / "pyproject.toml").exists():
            break
    return path


def load_settings(argv: list[str]) -> dict:
    p = argparse.ArgumentParser(prog="python -m anyalign bdhs", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="a BDHS config (YAML), e.g. configs/tools/video_bdhs.yaml")
    p.add_argument("--model", help="an exported model directory (instead of model_config)")
    p.add_argument("--model_config", help="a training config: the model it builds")
    p.add_argument("--ckpt_path", help="with model_config: a checkpoint, or 'last'")
    p.add_argument("--input", nargs="+", help="input shards (paths, brace patterns)")
    p.add_argument("--output", help="output directory")
    for k, v in DEFAULTS.items():
        if k not in ("similarity", "stop", "exhausted", "prefix_fraction", "sentences"):
            p.add_argument(f"--{k}", type=type(v))
    p.add_argument("--prefix_fraction", help="'random' (a random split point per sentence and try) or a number in "
                                             "[0, 1] (that share of each sentence's words)")
    p.add_argument("--sentences", choices=["true", "false"],
                   help="complete each sentence of the chosen response on its own (true) or the whole response")
    p.add_argument("--stop", action="append", help="a stop string (repeatable): the candidate ends after it")
    p.add_argument("--exhausted", choices=list(EXHAUSTED),
                   help="the last try: a full response without the chosen text, kept (unguided); or a sample still "
                        "too similar after max_tries is left out (drop) or written with its least similar "
                        "candidate (keep)")
    p.add_argument("--similarity", help="class_path of the similarity test (init_args: in the config)")
    a = p.parse_args(argv)
    settings = {"model": None, "model_config": None, "ckpt_path": None, "input": None, "output": None,
                **DEFAULTS}
    base = Path.cwd()
    if a.config:
        path = Path(a.config)
        if not path.exists():
            raise ConfigError(f"--config {a.config}: no such file")
        loaded = yaml.safe_load(path.read_text()) or {}
        unknown = sorted(set(loaded) - set(settings))
        if unknown:
            raise ConfigError(f"unknown key(s) in {a.config}: {unknown}; known: {sorted(settings)}")
        settings.update(loaded)
        base = path.resolve().parent
    for k, v in vars(a).items():
        if k != "config" and v is not None:
            settings[k] = {"class_path": v} if k == "similarity" else v
    if a.model:
        settings["model_config"] = None
    if isinstance(settings["input"], str):
        settings["input"] = [settings["input"]]
    for k in ("model", "model_config"):
        if settings[k]:
            settings[k] = _resolve(settings[k], base)
    settings["input"] = [_resolve(s, base) for s in settings["input"] or []]
    if not (settings["model"] or settings["model_config"]):
        raise ConfigError("bdhs needs `model` (an export) or `model_config` (a training config)")
    if not settings["input"] or not settings["output"]:
        raise ConfigError("bdhs needs `input` (shards) and `output` (a directory)")
    if isinstance(settings["sentences"], str):
        settings["sentences"] = settings["sentences"].lower() == "true"
    pf = settings["prefix_fraction"]
    if pf != "random":
        try:
            settings["prefix_fraction"] = pf = float(pf)
        except (TypeError, ValueError):
            raise ConfigError(f"prefix_fraction must be 'random' or a number in [0, 1], got {pf!r}") from None
    for k in ("mask_fraction", "swap_yes_no") + (() if pf == "random" else ("prefix_fraction",)):
        if not 0 <= float(settings[k]) <= 1:
            raise ConfigError(f"{k} must be in [0, 1], got {settings[k]}")
    if settings["exhausted"] not in EXHAUSTED:
        raise ConfigError(f"exhausted must be one of {list(EXHAUSTED)}, got {settings['exhausted']!r}")
    if int(settings["max_tries"]) < 1:
        raise ConfigError(f"max_tries must be >= 1, got {settings['max_tries']}")
    return settings


def run(settings: dict, model=None, log=print) -> dict:
    """Generate the rejected responses and write the shards; returns the summary written to ``bdhs.json``."""
    from .data.loading import expand_shards
    from .data.pipeline import Skipped, decode
    from .generation import prepare
    if model is None:
        from .predict import load_model
        model = load_model(settings["model"], settings["model_config"], settings["ckpt_path"])
    if hasattr(model, "generate_ids"):
        raise ConfigError(f"bdhs: {type(model).__name__} (a pretrained family) generates with its own generate, "
                          "where blocking attention to media tokens is not implemented yet; use a model built "
                          "from model.lm + model.adapters")
    model.eval()
    similarity = build_similarity(settings["similarity"])
    similarity.bind(model)
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(int(settings["seed"]))
    rng = torch.Generator(device=device).manual_seed(int(settings["seed"])) if settings["temperature"] > 0 else None
    adapters = dict(model.adapters.items())
    out_dir = Path(settings["output"])
    out_dir.mkdir(parents=True, exist_ok=True)
    per_sample, skipped, shards = {}, [], []
    for spec in settings["input"]:
        for url in expand_shards(spec, "input"):
            samples = list(read_tar(url))
            kept, pending = [], []
            for key, members in samples:
                raw = {"__key__": key, "__url__": url}
                for name, data in members:
                    raw[name.rsplit("/", 1)[-1].partition(".")[2].lower()] = data
                ex = next(decode(iter([raw]), adapters))
                if isinstance(ex, Skipped):
                    skipped.append((url, key, ex.reason))
                    continue
                if "chosen" not in ex["responses"]:
                    skipped.append((url, key, "no 'chosen' response (unpaired sample)"))
                    continue
                try:
                    prepared = prepare(model, {"messages": ex["messages"], "media": ex["media"]})
                except (BadSample, OSError) as e:
                    skipped.append((url, key, str(e)))
                    continue
                pending.append((key, members, {"prepared": prepared, "chosen": ex["responses"]["chosen"]}))
            bs = int(settings["batch_size"])
            for start in range(0, len(pending), bs):
                chunk = pending[start:start + bs]
                outcomes = sample_rejected(model, [c[2] for c in chunk], settings, similarity, gen, rng)
                for (key, members, _), o in zip(chunk, outcomes):
                    if o.accepted or settings["exhausted"] == "keep":
                        kept.append(with_rejected(members, o.rejected))
                    per_sample[f"{Path(url).name}/{key}"] = {"tries": o.tries, "similarity": round(o.similarity, 4),
                                                            "accepted": o.accepted, "guided": o.guided,
                                                            "rejected": o.rejected}
            target = out_dir / Path(url).name
            write_tar(target, kept)
            shards.append(str(target))
            log(f"[anyalign] bdhs: {target} ({len(kept)} samples)")
    tries = Counter(v["tries"] for v in per_sample.values() if v["accepted"] and v["guided"])
    exhausted = sum(not v["accepted"] or not v["guided"] for v in per_sample.values())
    summary = {"settings": {k: v for k, v in settings.items()}, "shards": shards, "samples": len(per_sample),
               "tries": {str(k): tries[k] for k in sorted(tries)}, "exhausted": exhausted,
               "skipped": [{"url": u, "key": k, "reason": r} for u, k, r in skipped], "per_sample": per_sample}
    (out_dir / "bdhs.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False))
    hist = ", ".join(f"{n} in {k} {'try' if k == 1 else 'tries'}" for k, n in sorted(tries.items())) or "none"
    what = {"keep": "least similar candidate kept", "drop": "left out",
            "unguided": "an unguided response kept"}[settings["exhausted"]]
    guided = int(settings["max_tries"]) - (settings["exhausted"] == "unguided" and int(settings["max_tries"]) > 1)
    log(f"[anyalign] bdhs: {len(per_sample)} samples: {hist}; {exhausted} still too similar after "
        f"{guided} guided {'try' if guided == 1 else 'tries'} ({what}); {len(skipped)} skipped")
    for u, k, r in skipped:
        log(f"[anyalign] skipped {k} ({u}): {r}")
    return summary


def main(argv: list[str] | None = None) -> int:
    settings = load_settings(list(sys.argv[1:] if argv is None else argv))
    summary = run(settings, log=lambda s: print(s, file=sys.stderr))
    return 0 if summary["samples"] else 1
