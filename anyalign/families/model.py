"""FamilyLM: a pretrained multimodal model of a family transformers ships, aligned in place.

The model is loaded with its own class and processor and runs its own multimodal forward (``model.model``: its
towers, its projector, its placeholder scatter), given three things anyalign computes for its rows:

- the attention mask: the slot rule of ``anyalign/logprobs.py`` (prompt once, each response seeing the prompt and
  itself), plus what the family adds per layer: attention both ways inside one image (Gemma 3) and sliding
  windows measured in positions, not in row indices, so a response after another response in the same row sees
  exactly what it would alone. A family with several layer types gets one mask per type (a dict, which
  transformers' text models take as it is);
- the position ids: 1-D ones restarting at each response, or the family's 3-D rotary positions (M-RoPE) for the
  prompt with each response continuing from the prompt's end;
- the media inputs of the rows, as the family's processor made them in the data workers (``media.py``).

Only the positions of scored tokens go through the LM head (``gather_logps``).
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from torch import nn

from ..logprobs import SeqLogps, _allowed, attention_block_mask, gather_logps
from ..model import StepCache, enable_checkpointing
from .media import MEDIA_CLASSES
from .spec import Family, _token_id
from .template import FamilyTokenizer

log = logging.getLogger("anyalign")

FREEZABLE = ("encoder", "projector", "lm")


def _submodule(root: nn.Module, path: str) -> nn.Module | None:
    for part in path.split("."):
        root = getattr(root, part, None)
        if root is None:
            return None
    return root


class FamilyLM(nn.Module):
    def __init__(
        self,
        lm: str,
        family: Family,
        attn_implementation: str = "sdpa",
        torch_dtype: str = "float32",
        chat_template: str | None = None,
        gradient_checkpointing: bool = False,
        trust_remote_code: bool = False,
        lora: dict | None = None,
        freeze: list[str] | None = None,
        media: dict[str, dict] | None = None,
        processor_kwargs: dict | None = None,
    ):
        super().__init__()
        import transformers
        from transformers import AutoProcessor

        self.family, self.source = family, lm
        self.attn_request = attn_implementation
        impl = "sdpa" if attn_implementation == "auto" else attn_implementation
        config = transformers.AutoConfig.from_pretrained(lm, trust_remote_code=trust_remote_code)
        name = family.model_class or (config.architectures[0] if config.architectures else None)
        cls = getattr(transformers, name, None) if name else None
        if cls is None:
            cls = transformers.AutoModelForImageTextToText
        self.lm = cls.from_pretrained(lm, attn_implementation=impl, dtype=getattr(torch, torch_dtype),
                                      trust_remote_code=trust_remote_code)
        self.processor = AutoProcessor.from_pretrained(lm, trust_remote_code=trust_remote_code,
                                                       **(processor_kwargs or {}))
        self.tokenizer = self.processor.tokenizer
        if chat_template is not None:
            path = Path(chat_template)
            text = path.read_text() if path.suffix == ".jinja" else chat_template
            self.processor.chat_template = self.tokenizer.chat_template = text
        if getattr(self.processor, "chat_template", None) is None:
            raise ValueError(f"the processor of {lm} has no chat template; set model.chat_template")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

        media = media or {}
        unknown = set(media) - set(family.media)
        if unknown:
            raise ValueError(f"model.media names {sorted(unknown)}, but {family.name} takes {sorted(family.media)}")
        adapters = {}
        for modality in family.media:
            token = _token_id(self.lm.config, modality)
            if token is None:
                raise ValueError(f"{lm}: its config names no {modality} token id")
            adapters[modality] = MEDIA_CLASSES[modality](**media.get(modality, {})).attach(self.processor, family, token)
        self.adapters = nn.ModuleDict(adapters)
        self.media_token_ids = {m: a.placeholder_id for m, a in adapters.items()}
        self.bidirectional_ids = [self.media_token_ids[m] for m in family.bidirectional]

        text = self.lm.config.get_text_config()
        self.softcap = getattr(text, "final_logit_softcapping", None)
        self.layer_types = sorted(set(getattr(text, "layer_types", None) or ["full_attention"]))
        unsupported = set(self.layer_types) - {"full_attention", "sliding_attention"}
        if unsupported:
            raise ValueError(f"{lm}: layer types {sorted(unsupported)} are not supported yet")
        self.sliding_window = getattr(text, "sliding_window", None)

        self.frozen = list(("encoder",) if freeze is None else freeze)
        bad = sorted(set(self.frozen) - set(FREEZABLE))
        if bad:
            raise ValueError(f"model.freeze: {bad} unknown; choose from {list(FREEZABLE)}")
        if gradient_checkpointing:
            enable_checkpointing(self.lm)
        if lora:  # LoRA on the language model's linear layers; the towers and projector follow model.freeze
            from peft import LoraConfig, get_peft_model
            lm_root = _submodule(self.lm.model, family.language_model)
            prefix = f"model.{family.language_model}."
            targets = [prefix + n for n, m in lm_root.named_modules() if isinstance(m, nn.Linear)]
            self.lm = get_peft_model(self.lm, LoraConfig(**{"target_modules": targets, **lora}))
        self.apply_freeze()
        self.train()

    # ---- parts ----
    @property
    def hf(self) -> nn.Module:
        """The family model itself (under LoRA, the wrapped one)."""
        return self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm

    def parts(self) -> dict[str, list[nn.Module]]:
        inner = self.hf.model
        encoders = [m for p in self.family.encoders if (m := _submodule(inner, p)) is not None]
        projectors = [m for p in self.family.projectors if (m := _submodule(inner, p)) is not None]
        lm = [_submodule(inner, self.family.language_model), self.hf.lm_head]
        return {"encoder": encoders, "projector": projectors, "lm": lm}

    def apply_freeze(self) -> None:
        """``model.freeze``: the encoders (vision/audio towers), the projector and the LM, each switchable. The
        projector is applied after the encoders, as it may sit inside one (Qwen's ``visual.merger``). Under LoRA
        the LM's base weights stay frozen whatever the setting (peft froze them) and its LoRA weights train."""
        lora = hasattr(self.lm, "get_base_model")
        parts = self.parts()
        for name in ("lm", "encoder", "projector"):
            if name == "lm" and lora:
                continue
            for module in parts[name]:
                module.requires_grad_(name not in self.frozen)

    # ---- data ----
    def preference_tokenizer(self, max_length: int) -> FamilyTokenizer:
        make = self.family.tokenizer or FamilyTokenizer  # a family's own, when it renders prompts its own way
        return make(self.processor, dict(self.adapters.items()), max_length)

    # ---- attention ----
    @property
    def attn_implementation(self) -> str:
        return self.hf.get_decoder().config._attn_implementation

    def configure_attention(self, device) -> str:
        """``auto`` is SDPA with anyalign's dense mask for every family (flex attention is not wired for families)."""
        return self.attn_implementation

    def shared_layout_unsupported_reason(self) -> str | None:
        impl = self.attn_implementation
        if impl not in ("sdpa", "eager"):
            return f"attn_implementation={impl!r} cannot take the shared layout's 4-D mask (supported: sdpa, eager)"
        return None

    def _dense_rule(self) -> bool:
        return bool(self.bidirectional_ids) or "sliding_attention" in self.layer_types

    def attention_mask(self, batch: dict, dtype: torch.dtype, cache: dict):
        key = (self.attn_implementation, dtype, batch["roles"].device)
        if key not in cache:
            cache[key] = self._build_mask(batch, dtype)
        return cache[key]

    def _build_mask(self, batch: dict, dtype: torch.dtype):
        roles = batch["roles"]
        if not self._dense_rule():
            if int(roles.max()) <= 1:
                return (roles >= 0).long()
            if self.attn_implementation == "flex_attention":
                return attention_block_mask(roles)
        idx = torch.arange(roles.shape[1], device=roles.device)
        allowed = _allowed(roles.unsqueeze(2), roles.unsqueeze(1), idx[:, None], idx[None, :])
        block = torch.zeros_like(allowed)
        if self.bidirectional_ids:  # each item's run of placeholder tokens attends itself both ways
            ids = batch["input_ids"]
            media = torch.isin(ids, torch.tensor(self.bidirectional_ids, device=ids.device))
            starts = media & ~torch.nn.functional.pad(media, (1, 0))[:, :-1]
            run = torch.cumsum(starts.long(), 1) * media
            block = (run.unsqueeze(2) == run.unsqueeze(1)) & (run.unsqueeze(2) > 0)
        masks = {}
        for layer_type in self.layer_types:
            rule = allowed
            if layer_type == "sliding_attention" and self.sliding_window:
                pos = batch["position_ids"]
                rule = rule & (pos.unsqueeze(2) - pos.unsqueeze(1) < self.sliding_window)
            rule = rule | block
            mask = torch.zeros(rule.shape, dtype=dtype, device=roles.device)
            masks[layer_type] = mask.masked_fill_(~rule, torch.finfo(dtype).min).unsqueeze(1)
        return masks if len(masks) > 1 else masks[self.layer_types[0]]

    # ---- positions ----
    def positions(self, batch: dict, media: dict) -> torch.Tensor:
        text = batch["position_ids"]
        if self.family.positions is None:
            return text
        roles = batch["roles"]
        pos = self.family.positions(self.hf, batch["input_ids"], (roles >= 0).long(), media)
        # each response continues from the prompt's last token (the row's prefix), whatever precedes it in the row;
        # not from the prompt's largest id: Omni's interleaved video + audio may end below it
        prompt_len = (roles == 0).sum(1, keepdim=True)
        start = pos.amax(0).gather(1, (prompt_len - 1).clamp(min=0)) + 1
        slot = roles > 0
        cont = (start + text - prompt_len).unsqueeze(0).expand_as(pos)
        return torch.where(slot.unsqueeze(0), cont, pos)

    # ---- forward ----
    def media_inputs(self, batch: dict) -> dict:
        out = {}
        for inputs in batch["media"].values():
            out.update(inputs)
        return out

    def forward(self, batch: dict, cache: StepCache | None = None) -> SeqLogps:
        cache = cache if cache is not None else StepCache()
        media = self.media_inputs(batch)
        dtype = self.hf.get_input_embeddings().weight.dtype
        mask = self.attention_mask(batch, dtype, cache.masks)
        out = self.hf.model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=self.positions(batch, media),
                            use_cache=False, **media)
        return gather_logps(out.last_hidden_state, self.hf.get_output_embeddings(), batch, self.softcap)

    # ---- generation ----
    @torch.no_grad()
    def generate_ids(self, prepared: list[dict], cfg, use_cache: bool = True, rng: torch.Generator | None = None,
                     stops: set[int] = frozenset()) -> list[list[int]]:
        """Token ids generated for each prepared prompt (``anyalign.generation.prepare``), through the family's own
        ``generate`` (its positions, masks and cache), left-padded, greedy or sampled as ``cfg`` says. Sampling
        draws from torch's generator, seeded from ``rng``. Prompts whose family arguments differ (Qwen2.5-Omni's
        ``use_audio_in_video``) are generated in separate calls."""
        import inspect
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(prepared):
            extra = self.family.generate_kwargs(self.hf, torch.tensor(p["ids"])) if self.family.generate_kwargs else {}
            groups.setdefault(tuple(sorted(extra.items())), []).append(i)
        takes = inspect.signature(self.hf.forward).parameters
        answers: list[list[int]] = [[] for _ in prepared]
        for key, members in groups.items():
            out = self._generate([prepared[i] for i in members], cfg, use_cache, rng, stops, dict(key), takes)
            for i, tokens in zip(members, out):
                answers[i] = tokens
        return answers

    def _generate(self, prepared, cfg, use_cache, rng, stops, family_kwargs: dict, takes) -> list[list[int]]:
        device = next(self.parameters()).device
        pad = self.tokenizer.pad_token_id
        n, length = len(prepared), max(len(p["ids"]) for p in prepared)
        ids = torch.full((n, length), pad, dtype=torch.long)
        mask = torch.zeros((n, length), dtype=torch.long)
        for i, p in enumerate(prepared):
            ids[i, length - len(p["ids"]):] = torch.tensor(p["ids"])
            mask[i, length - len(p["ids"]):] = 1
        media = {}
        for m, adapter in self.adapters.items():
            groups = [p["media"][m] for p in prepared if m in p["media"]]
            if groups:
                media.update(adapter.collate_samples(groups))
        extra = dict(family_kwargs)
        if self.family.positions is not None and "mm_token_type_ids" in takes:  # Qwen2-VL / 2.5-VL
            mm = torch.zeros_like(ids, dtype=torch.int32)
            for value, m in ((1, "image"), (2, "video")):
                if m in self.media_token_ids:
                    mm[ids == self.media_token_ids[m]] = value
            extra["mm_token_type_ids"] = mm
        if self.bidirectional_ids:  # Gemma 3: image blocks attend both ways
            extra["token_type_ids"] = torch.isin(ids, torch.tensor(self.bidirectional_ids)).long()
        sample = cfg.temperature > 0
        if sample:
            seed = int(torch.randint(2**62, (), generator=rng, device=rng.device)) if rng is not None else cfg.seed
            torch.manual_seed(seed)
        kwargs = {"do_sample": sample, "max_new_tokens": cfg.max_new_tokens, "use_cache": use_cache,
                  "pad_token_id": pad, "eos_token_id": sorted(stops) or None}
        if sample:
            kwargs |= {"temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": 0}
        if cfg.stop:
            kwargs |= {"stop_strings": list(cfg.stop), "tokenizer": self.tokenizer}
        was_training = self.training
        self.eval()
        try:
            tensors = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in {**media, **extra}.items()}
            out = self.lm.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **tensors, **kwargs)
        finally:
            self.train(was_training)
        answers = []
        for row in out[:, length:].tolist():
            tokens = []
            for t in row:
                if t in stops or t == pad:
                    break
                tokens.append(t)
            answers.append(tokens)
        return answers

    # ---- export ----
    def save_pretrained(self, directory: str | Path) -> Path:
        """The family's own format: ``from_pretrained`` of its class and ``AutoProcessor`` load the directory.
        LoRA is merged into the weights first."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        model = self.lm
        if hasattr(model, "merge_and_unload"):
            model = copy.deepcopy(model).merge_and_unload()
        model.save_pretrained(out)
        self.processor.save_pretrained(out)
        return out
