"""Generation from a ``MultimodalLM``: batched, with a KV cache, media encoded once per prompt.

    from anyalign import generate, load_aligned
    model = load_aligned("runs/video_dpo/lightning_logs/version_0/export")
    out = generate(model, [{"prompt": "<video>\nWhat is in this clip?", "media": {"video": ["clip.mp4"]}}])
    out[0]["response"]

A prompt is rendered with the model's chat template (``add_generation_prompt``), its placeholders expanded
to the adapters' token counts, and its media decoded and preprocessed by the adapters (the same stages as
training). The batch is left-padded; one forward over the prompts' embeddings (media spliced in once) fills
the cache, then each step feeds one token per row. ``use_cache=False`` recomputes the whole sequence at
every step instead (the reference the cached path is tested against); both reuse the prompt embeddings, so
media are encoded once either way. Decoding is greedy (``temperature=0``) or sampling with temperature and
nucleus (top-p) filtering from a generator seeded by ``seed``: the same seed gives the same answers. A row
stops at the tokenizer's end-of-turn / EOS token, at any of ``stop`` strings (cut from the response), or
after ``max_new_tokens``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device

from modalities.base import BadSample

from .data.template import PreferenceTokenizer
from .model import MultimodalLM


@dataclass
class GenerationConfig:
    max_new_tokens: int = 64
    temperature: float = 0.0      # 0: greedy
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int = 0
    batch_size: int = 8

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"temperature must be >= 0 and top_p in (0, 1], got {self.temperature}, {self.top_p}")


def _messages(prompt) -> list[dict]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [dict(m) for m in prompt]


def prepare(model: MultimodalLM, sample: dict) -> dict:
    """A sample ``{"prompt": str | messages, "system"?: str, "media": {modality: [path | bytes | tensor]}}``
    -> ``{"ids": prompt ids with placeholders expanded, "media": {modality: [tensor]}}``. Paths and bytes go
    through the adapter's ``decode`` and ``preprocess``; tensors are taken as preprocessed."""
    messages = sample.get("messages") or _messages(sample["prompt"])
    if sample.get("system"):
        messages = [{"role": "system", "content": sample["system"]}] + messages
    media = {}
    for modality, items in (sample.get("media") or {}).items():
        if modality not in model.adapters:
            raise BadSample(f"media of modality {modality!r}, but the model has adapters {sorted(model.adapters)}")
        adapter, out = model.adapters[modality], []
        for item in items:
            if isinstance(item, torch.Tensor):
                out.append(item)
                continue
            data, ext = (Path(item).read_bytes(), Path(item).suffix.lstrip(".").lower()) if isinstance(item, (str, Path)) \
                else (bytes(item), (adapter.extensions or ("",))[0])
            out.append(adapter.preprocess(adapter.decode(data, ext)))
        media[modality] = out
    make = getattr(model, "preference_tokenizer", None)
    if make is not None:  # a pretrained family: its processor expands the placeholders and processes the media
        enc = make(1 << 30).encode(messages, {}, media)
        return {"ids": enc["prompt"], "media": enc["media"], "messages": messages}
    sizes = {m: [model.adapters[m].num_tokens(x) for x in items] for m, items in media.items()}
    tok = PreferenceTokenizer(model.tokenizer, model.media_token_ids, max_length=1 << 30)
    return {"ids": tok(messages, {}, sizes)["prompt"], "media": media, "messages": messages}


def _stop_ids(model: MultimodalLM) -> set[int]:
    tok = model.tokenizer
    ids = {tok.eos_token_id} if tok.eos_token_id is not None else set()
    gen = getattr(model.lm, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    ids |= set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    return {i for i in ids if i is not None}


def _pick(logits: torch.Tensor, cfg: GenerationConfig, rng: torch.Generator | None) -> torch.Tensor:
    if cfg.temperature == 0:
        return logits.argmax(-1)
    probs = (logits.float() / cfg.temperature).softmax(-1)
    if cfg.top_p < 1:
        sorted_p, order = probs.sort(-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < cfg.top_p  # the smallest prefix whose mass reaches top_p
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p * keep)
    return torch.multinomial(probs, 1, generator=rng).squeeze(-1)


@torch.no_grad()
def generate_batch(model: MultimodalLM, prepared: list[dict], cfg: GenerationConfig, use_cache: bool = True,
                   rng: torch.Generator | None = None, blocked: list | None = None,
                   num_samples: int = 1) -> list[list[int]]:
    """Token ids generated for each prepared prompt (stop token excluded).

    ``num_samples`` (K): answers per prompt, returned prompt by prompt (prompt 0's K answers first). The
    prompts and their media are embedded once and the embeddings repeated K times, so each medium is encoded
    once for its K answers (online DPO samples K responses per prompt this way).

    ``blocked`` (off by default): per prompt, indices into its ``ids`` whose keys no position may attend to
    (BDHS hides media tokens this way). They are zeros in the attention mask only; the position ids still
    come from the padding mask, so no position shifts. ``None`` leaves generation exactly as it is."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if hasattr(model, "generate_ids"):  # a pretrained family: its own generate (M-RoPE, Gemma 3's image blocks)
        if blocked is not None:
            raise NotImplementedError("blocking attention to prompt positions is not supported for a pretrained "
                                      f"family ({type(model).__name__}): it generates with its own generate")
        # its own generate takes the processed media per row: each prompt is repeated K times
        return model.generate_ids([p for p in prepared for _ in range(num_samples)], cfg, use_cache, rng,
                                  _stop_ids(model))
    device = next(model.parameters()).device
    pad = model.tokenizer.pad_token_id
    n, length = len(prepared), max(len(p["ids"]) for p in prepared)
    ids = torch.full((n, length), pad, dtype=torch.long)
    mask = torch.zeros((n, length), dtype=torch.long)
    media: dict[str, list] = {}
    for i, p in enumerate(prepared):  # left padding: every prompt ends at the last column
        ids[i, length - len(p["ids"]):] = torch.tensor(p["ids"])
        mask[i, length - len(p["ids"]):] = 1
        for m, items in p["media"].items():
            media.setdefault(m, []).extend(items)
    ids, mask = ids.to(device), mask.to(device)
    attn = mask  # what the keys may be attended by: the padding mask, less any blocked positions
    if blocked is not None:
        attn = mask.clone()
        for i, (p, where) in enumerate(zip(prepared, blocked)):
            where = torch.as_tensor(where, dtype=torch.long).reshape(-1)
            if where.numel():
                if int(where.min()) < 0 or int(where.max()) >= len(p["ids"]):
                    raise IndexError(f"blocked positions of prompt {i} outside its {len(p['ids'])} tokens")
                attn[i, length - len(p["ids"]) + where.to(device)] = 0
    batch_media = move_data_to_device({m: model.adapters[m].collate(items) for m, items in media.items()}, device)
    embeds = model.embed(ids, batch_media)  # media encoded once, for the whole generation (and all K samples)
    if num_samples > 1:
        ids, mask, attn, embeds = (t.repeat_interleave(num_samples, dim=0) for t in (ids, mask, attn, embeds))
        n *= num_samples
    stops, emb_layer = _stop_ids(model), model.lm.get_input_embeddings()
    out = [[] for _ in range(n)]
    done = torch.zeros(n, dtype=torch.bool, device=device)
    cache_arg, extra = _forward_args(model)
    past, step_embeds = None, embeds
    for _ in range(cfg.max_new_tokens):
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        if use_cache and past is not None:
            res = model.lm(inputs_embeds=step_embeds[:, -1:], attention_mask=attn, position_ids=positions[:, -1:],
                           use_cache=True, **{cache_arg: past}, **extra)
        else:
            res = model.lm(inputs_embeds=step_embeds, attention_mask=attn, position_ids=positions, use_cache=use_cache,
                           **extra)
        past = getattr(res, cache_arg) if use_cache else None
        logits = res.logits[:, -1]  # the LM's own forward: final soft-capping (Gemma) already applied
        nxt = _pick(logits, cfg, rng)
        nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        for i in range(n):
            if not done[i]:
                if int(nxt[i]) in stops:
                    done[i] = True
                else:
                    out[i].append(int(nxt[i]))
                    if cfg.stop and any(s in model.tokenizer.decode(out[i]) for s in cfg.stop):
                        done[i] = True
        if bool(done.all()):
            break
        mask = torch.cat([mask, (~done).long()[:, None]], dim=1)
        attn = mask if blocked is None else torch.cat([attn, (~done).long()[:, None]], dim=1)
        step_embeds = torch.cat([step_embeds, emb_layer(nxt)[:, None].to(step_embeds.dtype)], dim=1)
    return out


def _forward_args(model: MultimodalLM) -> tuple[str, dict]:
    """The cache argument's name (``cache`` in transformers >= 5.24, ``past_key_values`` before) and, where
    the LM takes it, ``logits_to_keep=1``: only the last position's logits are ever needed."""
    import inspect
    lm = model.lm.get_base_model() if hasattr(model.lm, "get_base_model") else model.lm
    params = inspect.signature(lm.forward).parameters
    return ("cache" if "cache" in params else "past_key_values"), ({"logits_to_keep": 1} if "logits_to_keep" in params else {})


def _cut(text: str, stop: list[str]) -> str:
    cuts = [text.index(s) for s in stop if s in text]
    return text[: min(cuts)] if cuts else text


def generate(model: MultimodalLM, samples: list[dict], max_new_tokens: int = 64, temperature: float = 0.0,
             top_p: float = 1.0, stop: list[str] | None = None, seed: int = 0, batch_size: int = 8,
             use_cache: bool = True, prepared: list[dict] | None = None) -> list[dict]:
    """Answers for ``samples`` (see ``prepare``), in order: ``{"key", "prompt", "response", "tokens", "seconds"}``
    (``seconds``: the batch's wall time shared evenly). ``prepared``: the samples already through ``prepare``.
    The model is put in eval mode."""
    cfg = GenerationConfig(max_new_tokens, temperature, top_p, list(stop or []), seed, batch_size)
    model.eval()
    device = next(model.parameters()).device
    rng = torch.Generator(device=device).manual_seed(seed) if temperature > 0 else None
    results = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        ready = prepared[start:start + batch_size] if prepared is not None else [prepare(model, s) for s in chunk]
        t0 = time.perf_counter()
        tokens = generate_batch(model, ready, cfg, use_cache, rng)
        seconds = (time.perf_counter() - t0) / len(chunk)
        for i, (s, p, t) in enumerate(zip(chunk, ready, tokens)):
            prompt = s.get("prompt") if isinstance(s.get("prompt"), str) else p["messages"][-1]["content"]
            results.append({"key": s.get("key", str(start + i)), "prompt": prompt,
                            "response": _cut(model.tokenizer.decode(t, skip_special_tokens=True), cfg.stop),
                            "tokens": len(t), "seconds": round(seconds, 4)})
    return results
