"""MultimodalLM: any Hugging Face causal LM plus a dict of modality adapters, one shared token stream.

Each modality's placeholder (``<image>``, ``<video>``, ...) is added to the tokenizer as a special token
and the embedding matrix is resized. The data pipeline expands every placeholder to ``num_tokens`` copies
of that token; here the LM's input embeddings at those positions are replaced, in order, by the adapter's
output, and the LM runs on ``inputs_embeds``. Each batch's media are encoded once, whatever the number
of responses that share them.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from modalities import ModalityAdapter
from modalities.base import check_pretrained

from .logprobs import SeqLogps, attention_mask_4d, gather_logps


class MultimodalLM(nn.Module):
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
        super().__init__()
        check_pretrained(lm, "language model")
        self.lm = AutoModelForCausalLM.from_pretrained(
            lm, attn_implementation=attn_implementation, dtype=getattr(torch, torch_dtype),
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
            self.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

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

    def embed(self, input_ids: torch.Tensor, media: dict) -> torch.Tensor:
        embeds = self.lm.get_input_embeddings()(input_ids)
        for modality, items in media.items():
            feats = self.adapters[modality](items)
            feats = torch.cat(list(feats)) if isinstance(feats, (list, tuple)) else feats.flatten(0, 1)
            where = input_ids == self.media_token_ids[modality]
            if int(where.sum()) != feats.shape[0]:
                raise RuntimeError(f"{modality}: {int(where.sum())} placeholder positions but the adapter "
                                   f"produced {feats.shape[0]} embeddings")
            embeds = embeds.masked_scatter(where.unsqueeze(-1), feats.to(embeds.dtype))
        return embeds

    def forward(self, batch: dict) -> SeqLogps:
        embeds = self.embed(batch["input_ids"], batch["media"])
        roles = batch["roles"]
        if int(roles.max()) > 1:  # several responses share a row: block the slots from each other
            mask = attention_mask_4d(roles, embeds.dtype)
        else:  # one response per row: a plain padding mask keeps the fast causal kernels
            mask = (roles >= 0).long()
        hidden = self.lm.get_decoder()(inputs_embeds=embeds, attention_mask=mask,
                                       position_ids=batch["position_ids"], use_cache=False).last_hidden_state
        return gather_logps(hidden, self.lm.get_output_embeddings(), batch, self.softcap)
