"""MultimodalLM: any Hugging Face causal LM plus a dict of modality adapters, one shared token stream.

Each modality's placeholder (``<image>``, ``<video>``, ...) is added to the tokenizer as a special token
and the embedding matrix is resized. The data pipeline expands every placeholder to ``num_tokens`` copies
of that token; here the LM's input embeddings at those positions are replaced, in order, by the adapter's
output, and the LM runs on ``inputs_embeds``. Each batch's media are encoded once, whatever the number
of responses that share them.

Rows with several responses (the shared layout) need the slot mask of ``anyalign/logprobs.py``: a dense
float 4-D mask under ``sdpa``/``eager``, a block-sparse ``BlockMask`` under ``flex_attention``. Both go
to the decoder as prebuilt 4-D masks, which transformers passes to every layer untouched
(``masking_utils._preprocess_mask_arguments``); a mask is always given, so the position ids, which restart
at each slot, are never read as packed sequences (transformers only looks for those without a mask).
Packed rows (``data.packing``: several samples' groups in one row, a ``groups`` tensor in the batch) take
the same masks with the group rule added: a position sees only its own group, whose positions restart at 0.
Under SDPA on the CPU they skip the dense mask: each attention layer runs SDPA per group and per response
(``anyalign/attention.py``), so no work is spent on pairs of positions in different groups.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from torch.nn.attention.flex_attention import BlockMask
from transformers import AutoModelForCausalLM, AutoTokenizer

from modalities import ModalityAdapter
from modalities.base import check_pretrained

from .attention import Segments, attention_segments
from .logprobs import SeqLogps, attention_block_mask, attention_mask_4d, gather_logps

log = logging.getLogger("anyalign")

# attention kernels that apply a custom mask per (query, key) pair; flash kernels take padding only
SHARED_LAYOUT_ATTENTION = ("sdpa", "eager", "flex_attention")


def enable_checkpointing(model) -> None:
    """Recompute activations in backward (non-reentrant): ``activation_checkpointing_enable`` where transformers has
    it (it deprecates ``gradient_checkpointing_enable``), the older name before."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


class StepCache:
    """Work that depends on one batch only, shared by the forwards on it (the policy's and the reference's):
    the slot mask per (kernel, dtype, device), and frozen encoders' features per modality. The module makes
    one per step and drops it before backward, so nothing outlives the step."""

    def __init__(self):
        self.masks: dict = {}
        self.features: dict[str, dict] = {}


class MultimodalLM(nn.Module):
    # packed rows (``data.packing``): several groups per row, kept apart by the mask, positions restarting per
    # group. A model without this attribute (a pretrained family's, which builds its own masks) is never packed.
    supports_packing = True
    # whether the LM passes the decoder's keyword arguments on to its attention layers (segment attention for
    # packed rows, ``anyalign/attention.py``); set False the first time one is found not to
    _routes_segments = True

    def __init__(
        self,
        lm: str,
        adapters: dict[str, ModalityAdapter],
        attn_implementation: str = "sdpa",
        torch_dtype: str = "float32",
        chat_template: str | None = None,
        gradient_checkpointing: bool = False,
        trust_remote_code: bool = False,
        lora: dict | None = None,
    ):
        """``attn_implementation``: any transformers kernel, or ``auto`` (see ``configure_attention``)."""
        super().__init__()
        check_pretrained(lm, "language model")
        self.attn_request = attn_implementation
        self.lm = AutoModelForCausalLM.from_pretrained(
            lm, attn_implementation="sdpa" if attn_implementation == "auto" else attn_implementation,
            dtype=getattr(torch, torch_dtype),
            trust_remote_code=trust_remote_code)
        self.tokenizer = AutoTokenizer.from_pretrained(lm, trust_remote_code=trust_remote_code)
        if chat_template is not None:
            path = Path(chat_template)
            self.tokenizer.chat_template = path.read_text() if path.suffix == ".jinja" else chat_template
        if self.tokenizer.chat_template is None:
            raise ValueError(f"tokenizer of {lm} has no chat template; set model.chat_template")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if gradient_checkpointing:
            enable_checkpointing(self.lm)

        placeholders = [a.placeholder for a in adapters.values()]
        if len(set(placeholders)) != len(placeholders):
            raise ValueError(f"two adapters share a placeholder: {dict(zip(adapters, placeholders))}")
        self.tokenizer.add_special_tokens({"additional_special_tokens": placeholders},
                                          replace_extra_special_tokens=False)
        if len(self.tokenizer) > self.lm.get_input_embeddings().num_embeddings:
            self.lm.resize_token_embeddings(len(self.tokenizer))
        self.media_token_ids = {m: self.tokenizer.convert_tokens_to_ids(a.placeholder) for m, a in adapters.items()}

        hidden = self.lm.config.get_text_config().hidden_size
        for adapter in adapters.values():
            adapter.bind(hidden)
        self.adapters = nn.ModuleDict(adapters)
        if lora:  # LoRA on the LM, base weights frozen. Applied after the projectors are built, so a
            # seed gives the same projectors with or without LoRA.
            from peft import LoraConfig, get_peft_model
            args = {"target_modules": "all-linear", **lora}
            self.lm = get_peft_model(self.lm, LoraConfig(task_type="CAUSAL_LM", **args))
        self.softcap = getattr(self.lm.config.get_text_config(), "final_logit_softcapping", None)
        self.train()  # from_pretrained returns eval-mode modules; training needs the LM's dropout back

    def embed(self, input_ids: torch.Tensor, media: dict, features: dict | None = None) -> torch.Tensor:
        """Token embeddings with each placeholder position replaced by its adapter's output. ``features``: a
        per-batch dict (``StepCache.features``) in which adapters with a frozen encoder leave their features
        for the next forward on the same batch (the reference model's), so the encoders run once per batch."""
        embeds = self.lm.get_input_embeddings()(input_ids)
        for modality, items in media.items():
            adapter = self.adapters[modality]
            if features is not None and adapter.shares_features():
                feats = adapter(items, features=features.setdefault(modality, {}))
            else:
                feats = adapter(items)
            feats = torch.cat(list(feats)) if isinstance(feats, (list, tuple)) else feats.flatten(0, 1)
            where = input_ids == self.media_token_ids[modality]
            if int(where.sum()) != feats.shape[0]:
                raise RuntimeError(f"{modality}: {int(where.sum())} placeholder positions but the adapter "
                                   f"produced {feats.shape[0]} embeddings")
            embeds = embeds.masked_scatter(where.unsqueeze(-1), feats.to(embeds.dtype))
        return embeds

    @property
    def attn_implementation(self) -> str:
        """The kernel the decoder runs now (``auto`` resolved)."""
        return self.lm.get_decoder().config._attn_implementation

    def configure_attention(self, device: torch.device | str) -> str:
        """Resolve ``auto`` for the device the model runs on; an explicit implementation is left as it is.

        ``auto`` is flex attention on CUDA (the slot mask stays block-sparse: no ``[rows, T, T]`` tensor) and
        SDPA with the dense float mask elsewhere: flex attention has no backward on CPU. Flex is skipped for
        an LM without flex support or with attention dropout (which transformers' flex path refuses). The
        model is built on CPU, so this runs once it is on its device, on the policy and on any deep copy
        of it (a frozen reference). Returns the implementation in use.
        """
        if self.attn_request == "auto":
            flex = (torch.device(device).type == "cuda"
                    and getattr(self.lm.get_decoder(), "_supports_flex_attn", False)
                    and not getattr(self.lm.config.get_text_config(), "attention_dropout", 0.0))
            want = "flex_attention" if flex else "sdpa"
            if want != self.attn_implementation:
                self.lm.set_attn_implementation(want)
                log.info("attn_implementation=auto on %s: %s", device, self.attn_implementation)
        return self.attn_implementation

    def shared_layout_unsupported_reason(self) -> str | None:
        """None if rows with several responses compute what separate forwards would, else why not (one line):
        the kernel must apply a custom mask, and every layer must be plain causal attention, since the one
        prebuilt mask replaces the sliding-window / chunked masks transformers would build per layer type."""
        impl = self.attn_implementation
        if impl not in SHARED_LAYOUT_ATTENTION:
            return (f"attn_implementation={impl!r} cannot take the shared layout's 4-D mask "
                    f"(supported: {', '.join(SHARED_LAYOUT_ATTENTION)})")
        text = self.lm.config.get_text_config()
        layer_types = getattr(text, "layer_types", None)
        if layer_types is not None:  # e.g. sliding_attention, chunked_attention, linear_attention
            other = sorted(set(layer_types) - {"full_attention"})
        else:  # older configs declare a window for every layer (Mistral)
            other = [k for k in ("sliding_window", "attention_chunk_size") if getattr(text, k, None)]
        if other:
            return (f"the LM's attention is not plain causal in every layer ({', '.join(other)}), and the shared "
                    "layout's one mask would replace its per-layer masks")
        return None

    def attention_mask(self, roles: torch.Tensor, dtype: torch.dtype, cache: dict,
                       groups: torch.Tensor | None = None) -> torch.Tensor | BlockMask:
        """The decoder's mask for these rows, built once per (kernel, dtype, device) into ``cache``. ``groups``:
        the group ids of packed rows (``anyalign/logprobs.py``), None for one group per row."""
        key = (self.attn_implementation, dtype, roles.device)
        if key not in cache:
            cache[key] = self._build_mask(roles, dtype, groups)
        return cache[key]

    def _build_mask(self, roles: torch.Tensor, dtype: torch.dtype,
                    groups: torch.Tensor | None = None) -> torch.Tensor | BlockMask:
        if groups is not None and int(groups.max()) <= 0:
            groups = None  # one group per row: the unpacked rule
        if groups is None and int(roles.max()) <= 1:  # one response per row: a plain padding mask keeps the fast causal kernels
            return (roles >= 0).long()
        reason = self.shared_layout_unsupported_reason()  # several responses share a row: slots blocked apart
        if reason is not None:
            what = "packs several samples into one row (data.packing)" if groups is not None else \
                "puts several responses in one row (the shared layout)"
            fix = "set data.packing: false" if groups is not None else "set data.layout: concatenated"
            raise ValueError(f"this batch {what}, but {reason}; {fix}")
        if self.attn_implementation == "flex_attention":
            return attention_block_mask(roles, groups)
        return attention_mask_4d(roles, dtype, groups)

    def segments(self, roles: torch.Tensor, groups: torch.Tensor | None, dtype: torch.dtype,
                 cache: dict) -> Segments | None:
        """Packed rows cut at their groups and slots for segment attention (``anyalign/attention.py``), built once per
        (dtype, device) into ``cache``; None where the dense mask is used instead: unpacked rows (or packed rows
        of one group each), a kernel other than SDPA, a GPU (flex attention is the block-sparse kernel there),
        or an LM found not to pass the decoder's keyword arguments on to its attention layers."""
        if (groups is None or self.attn_implementation != "sdpa" or roles.device.type != "cpu"
                or not self._routes_segments or int(groups.max()) <= 0):
            return None
        key = ("segments", dtype, roles.device)
        if key not in cache:
            if self.shared_layout_unsupported_reason() is not None:
                return None  # the dense path raises with the reason
            cache[key] = attention_segments(roles, groups, dtype)
        return cache[key]

    def forward(self, batch: dict, cache: StepCache | None = None) -> SeqLogps:
        """Sequence log-probs of a collated batch. ``cache``: pass the step's ``StepCache`` so a second forward
        on the same batch (the reference's) reuses the slot mask and frozen encoders' features."""
        cache = cache if cache is not None else StepCache()
        embeds = self.embed(batch["input_ids"], batch["media"], cache.features)
        decoder, hidden = self.lm.get_decoder(), None
        segments = self.segments(batch["roles"], batch.get("groups"), embeds.dtype, cache.masks)
        if segments is not None:  # packed rows under SDPA on the CPU: attention per group and slot, no dense mask
            rows, length = batch["roles"].shape
            calls = segments.calls
            # a placeholder 4-D mask (a broadcast zero, no memory): transformers passes 4-D masks on untouched,
            # and the segment attention reads each group's own mask from ``segments`` instead
            placeholder = embeds.new_zeros(()).expand(rows, 1, length, length)
            out = decoder(inputs_embeds=embeds, attention_mask=placeholder, position_ids=batch["position_ids"],
                          use_cache=False, anyalign_segments=segments).last_hidden_state
            layers = self.lm.config.get_text_config().num_hidden_layers
            if segments.calls - calls == layers:
                hidden = out
            elif segments.calls == calls:  # the LM drops the keyword: the dense mask from now on
                log.info("%s does not pass attention keywords on: packed rows take the dense mask",
                         type(decoder).__name__)
                self._routes_segments = False
            else:
                raise RuntimeError(f"segment attention ran in {segments.calls - calls} of {layers} decoder layers")
        if hidden is None:
            mask = self.attention_mask(batch["roles"], embeds.dtype, cache.masks, batch.get("groups"))
            hidden = decoder(inputs_embeds=embeds, attention_mask=mask, position_ids=batch["position_ids"],
                             use_cache=False).last_hidden_state
        return gather_logps(hidden, self.lm.get_output_embeddings(), batch, self.softcap)


def is_export(directory: str | Path) -> bool:
    """An anyalign export of an assembled model (``anyalign/export.py``): it holds ``anyalign.json``."""
    return (Path(directory) / "anyalign.json").is_file()


def export_adapters(directory: str | Path) -> dict[str, ModalityAdapter]:
    """The adapters of an anyalign export, rebuilt from their class paths and init args (the LM is
    ``directory/lm``); ``load_export_weights`` gives them their trained weights once a ``MultimodalLM`` holds them
    (their projectors are sized to the LM there)."""
    import importlib
    import json

    src = Path(directory)
    meta = json.loads((src / "anyalign.json").read_text())
    adapters = {}
    for name, spec in meta["adapters"].items():
        module, _, cls_name = spec["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module), cls_name)
        args = dict(spec["init_args"])
        for k in spec.get("relative", []):
            args[k] = str(src / args[k])
        adapters[name] = cls(**args)
    return adapters


def load_export_weights(model: "MultimodalLM", directory: str | Path) -> "MultimodalLM":
    """The trained adapter weights of an export (``adapters/<name>/adapter.safetensors``) into ``model``'s adapters."""
    from safetensors.torch import load_file
    for name, adapter in model.adapters.items():
        adapter.load_state_dict(load_file(str(Path(directory) / "adapters" / name / "adapter.safetensors")))
    return model


def check_export_adapters(directory: str | Path, exported: dict, configured: dict) -> None:
    """``model.lm`` is an export and ``model.adapters`` is set too: the export's trained adapters are used, so the
    configured ones must be the same modalities and classes (else ValueError naming the key); init args that differ
    are named in a warning (the export's hold)."""
    if sorted(configured) != sorted(exported):
        raise ValueError(f"model.lm {directory} is an anyalign export with adapters {sorted(exported)}, but "
                         f"model.adapters names {sorted(configured)}: leave model.adapters out (the export brings "
                         "its own, trained) or name the same modalities")
    for name, adapter in configured.items():
        mine, theirs = type(adapter), type(exported[name])
        if mine is not theirs:
            raise ValueError(f"model.adapters.{name} is a {mine.__name__}, but the export {directory} holds a "
                             f"{theirs.__name__}: leave model.adapters out (the export brings its own)")
        paths = {k for k, v in exported[name].init_args.items() if isinstance(v, str) and Path(v).is_relative_to(directory)}
        differ = sorted(k for k, v in adapter.init_args.items()
                        if k not in paths and exported[name].init_args.get(k, v) != v)
        if differ:
            log.warning("model.adapters.%s: %s differ from the export %s; the export's trained adapter is used as "
                        "it was exported", name, ", ".join(differ), directory)
