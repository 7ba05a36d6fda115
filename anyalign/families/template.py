"""Prompts of a pretrained family: the family's own chat template and processor.

Shards write media as markers in the text (``<image>``, ``<video>``, ``<audio>``). Each message becomes the
structured content the family's template expects (``[{"type": "image"}, {"type": "text", "text": ...}]``), the
template renders it with the family's own marker tokens, and the family's processor expands those into its
placeholder tokens (as many per item as its towers return: tiles, grids, frames) while it processes the media.
A response is what the template adds after the prompt (``PreferenceTokenizer``), so end-of-turn tokens are scored
and the loss mask comes from the template.
"""
from __future__ import annotations

import re

from modalities import BadSample

from ..data.template import PreferenceTokenizer
from .media import FamilyMedia, ProcessedItems


class FamilyTokenizer(PreferenceTokenizer):
    processes_media = True

    def __init__(self, processor, adapters: dict[str, FamilyMedia], max_length: int):
        super().__init__(processor.tokenizer, {m: a.placeholder_id for m, a in adapters.items()}, max_length)
        self.processor, self.adapters = processor, adapters
        markers = {a.placeholder: m for m, a in adapters.items()}
        self._markers = markers
        self._split = re.compile("(" + "|".join(re.escape(k) for k in markers) + ")")

    def structured(self, messages: list[dict]) -> list[dict]:
        out = []
        for message in messages:
            content = []
            for part in self._split.split(message["content"]):
                if part in self._markers:
                    content.append({"type": self._markers[part]})
                elif part.strip():
                    content.append({"type": "text", "text": part.strip()})
            out.append({"role": message["role"], "content": content})
        return out

    def render(self, messages: list[dict], response: str | None = None) -> str:
        conv = self.structured(messages)
        if response is None:
            return self.processor.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        conv = conv + [{"role": "assistant", "content": [{"type": "text", "text": response}]}]
        return self.processor.apply_chat_template(conv, tokenize=False)

    def process_prompt(self, messages: list[dict], media: dict) -> tuple[str, dict]:
        """Render the prompt and run the processor on it and the sample's media -> (prompt text, processor output)."""
        text = " ".join(m["content"] for m in messages)
        for marker, modality in self._markers.items():
            n, have = text.count(marker), len(media.get(modality, []))
            if n != have:
                raise BadSample(f"prompt has {n} {marker} marker(s) but the sample has {have} {modality} item(s)")
        for modality in media:
            if modality not in self.adapters:
                raise BadSample(f"this model takes no {modality}")
        prefix = self.render(messages)
        kwargs = {}
        for modality, items in media.items():
            adapter = self.adapters[modality]
            kwargs[adapter.family.processor_keys[modality]] = [adapter.to_processor(x) for x in items]
            kwargs.update(adapter.call_kwargs(items))
            if adapter.family.call_kwargs:
                kwargs.update(adapter.family.call_kwargs(self.processor, set(media)))
        bos = self.tokenizer.bos_token
        # the processor's own rule (ProcessorMixin.apply_chat_template): no second BOS after a template's own
        add_special = not (bos is not None and prefix.startswith(bos))
        out = self.processor(text=[prefix], return_tensors="pt", add_special_tokens=add_special, **kwargs)
        return prefix, out

    def encode(self, messages: list[dict], responses: dict[str, str], media: dict,
               weights: dict | None = None) -> dict:
        prefix, out = self.process_prompt(messages, media)
        prompt = out["input_ids"][0].tolist()
        room = self.max_length - len(prompt)
        if room < 1:
            raise BadSample(f"prompt takes {len(prompt)} tokens with its media; max_length is {self.max_length}")
        processed = {}
        for modality, items in media.items():
            inputs, tokens = self.adapters[modality].select(out)
            processed[modality] = ProcessedItems(items, inputs, tokens)
        weights = {name: spans for name, spans in (weights or {}).items() if spans and name in responses}
        ids, token_weights = {}, {}
        for name, text in responses.items():
            if name in weights:
                r, w = self.weighted_response_ids(messages, prefix, text, weights[name], name)
                ids[name], token_weights[name] = r[:room], w[:room]
            else:
                ids[name] = self.response_ids(messages, prefix, text)[:room]
        result = {"prompt": prompt, "responses": ids, "media": processed}
        if token_weights:
            result["weights"] = token_weights
        return result
