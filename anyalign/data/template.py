"""Chat-template tokenization with media placeholders.

The prompt is rendered with ``add_generation_prompt=True``; a response is whatever the template adds
after that prefix when the assistant turn is appended (so end-of-turn tokens are scored, and the loss
mask comes from the template, never from counting back from the end). Each placeholder token is then
expanded to as many positions as its media item takes. Over-long samples lose response tokens only; a
prompt that does not fit, media included, makes the sample bad.

Weighted spans (``schema.py``) become per-token weights: the response text is located inside the rendered
suffix, the suffix is tokenized with the fast tokenizer's offset mapping (the same ids as without it), and
a token overlapping a span takes the span's weight (the span it overlaps most, if it straddles two). Every
other token, template tokens such as end-of-turn included, weighs 1. Truncation cuts ids and weights alike.
Samples without spans take the cheap path: no offsets, no weight lists.
"""
from __future__ import annotations

from modalities import BadSample

_MARKER = "\ue000anyalign-response\ue000"  # private-use characters: no template or tokenizer rewrites them


class PreferenceTokenizer:
    def __init__(self, tokenizer, media_token_ids: dict[str, int], max_length: int):
        self.tokenizer = tokenizer
        self.media_token_ids = media_token_ids
        self.max_length = max_length

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def render(self, messages: list[dict], response: str | None = None) -> str:
        if response is None:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response}],
                                                  tokenize=False)

    def _suffix(self, messages: list[dict], prefix: str, response: str) -> str:
        full = self.render(messages, response)
        if full.startswith(prefix):
            return full[len(prefix):]
        # Some templates write the assistant header one way in the generation prompt and another way before a
        # message (LLaVA-OneVision's: "assistant\n" vs "assistant \n"). What the model generates after the
        # generation prompt is the content and what follows it, so that is the response.
        probe = self.render(messages, _MARKER)
        at = probe.find(_MARKER)
        if at < 0 or not full.startswith(probe[:at]):
            raise ValueError("the chat template does not render the prompt as a prefix of prompt + response, and "
                             "the response's place in it cannot be found; set model.chat_template to one that does")
        return full[at:]

    def _check(self, ids: list[int]) -> list[int]:
        if any(i in self.media_token_ids.values() for i in ids):
            raise BadSample("a response contains a media placeholder")
        return ids

    def response_ids(self, messages: list[dict], prefix: str, response: str) -> list[int]:
        return self._check(self._ids(self._suffix(messages, prefix, response)))

    def _locate(self, messages: list[dict], prefix: str, suffix: str, response: str, name: str) -> int:
        """``at`` such that character ``c`` of ``response`` is character ``at + c`` of the rendered suffix.

        Where the template puts an assistant message's content comes from rendering a marker in its place
        (so a short response is not matched inside the template's own text); plain search is the fallback.
        A template that strips the content is followed; one that otherwise changes it makes the sample bad."""
        probe = self._suffix(messages, prefix, _MARKER).find(_MARKER)
        lead = len(response) - len(response.lstrip())
        for text, shift in ((response, 0), (response.strip(), lead)):
            if not text:
                continue
            for at in (probe, suffix.find(text)):
                if at >= 0 and suffix.startswith(text, at):
                    return at - shift
        if not response:
            return max(probe, 0)
        raise BadSample(f"the chat template changes the text of {name!r}, so its weighted spans cannot be placed")

    def weighted_response_ids(self, messages: list[dict], prefix: str, response: str,
                              spans: list[tuple[int, int, float]], name: str = "response"
                              ) -> tuple[list[int], list[float]]:
        """Like ``response_ids``, plus one weight per token from character ``spans`` into ``response``."""
        if not getattr(self.tokenizer, "is_fast", False):
            raise ValueError("weighted spans need a fast tokenizer (offset mapping); this model's tokenizer is not one")
        suffix = self._suffix(messages, prefix, response)
        at = self._locate(messages, prefix, suffix, response, name)
        enc = self.tokenizer(suffix, add_special_tokens=False, return_offsets_mapping=True)
        ids = self._check(enc["input_ids"])
        weights = []
        for a, b in enc["offset_mapping"]:
            a, b = a - at, b - at  # the token's characters in response coordinates
            best, weight = -1, 1.0
            for s, e, w in spans:  # sorted and disjoint: a tie goes to the earlier span
                overlap = min(b, e) - max(a, s)
                if (overlap > 0 or (a == b and s <= a < e)) and overlap > best:
                    best, weight = overlap, w
            weights.append(weight)
        return ids, weights

    def __call__(self, messages: list[dict], responses: dict[str, str], sizes: dict[str, list[int]],
                 weights: dict[str, list[tuple[int, int, float]]] | None = None) -> dict:
        """sizes: tokens per media item, per modality, in prompt order; weights: character spans per
        response (``schema.parse_record``), optional.
        -> ``{"prompt": ids with placeholders expanded, "responses": {name: ids}}``, plus
        ``"weights": {name: [float per token]}`` for the responses that have spans."""
        prefix = self.render(messages)
        prompt = []
        counts = {m: 0 for m in self.media_token_ids}
        for tok in self._ids(prefix):
            modality = next((m for m, t in self.media_token_ids.items() if t == tok), None)
            if modality is None:
                prompt.append(tok)
                continue
            i = counts[modality]
            counts[modality] += 1
            if i < len(sizes.get(modality, [])):
                prompt.extend([tok] * sizes[modality][i])
        for m, n in counts.items():
            have = len(sizes.get(m, []))
            if n != have:
                raise BadSample(f"prompt has {n} {self.tokenizer.convert_ids_to_tokens(self.media_token_ids[m])} "
                                f"placeholder{'' if n == 1 else 's'} but the sample has {have} {m} "
                                f"item{'' if have == 1 else 's'}" + ("" if have else
                                "; media members are KEY.<ext> or KEY.0.<ext>, KEY.1.<ext>, ... with an extension "
                                "the adapter reads"))
        room = self.max_length - len(prompt)
        if room < 1:
            raise BadSample(f"prompt takes {len(prompt)} tokens with its media; max_length is {self.max_length}")
        weights = {name: spans for name, spans in (weights or {}).items() if spans and name in responses}
        out, token_weights = {}, {}
        for name, text in responses.items():
            if name in weights:
                ids, w = self.weighted_response_ids(messages, prefix, text, weights[name], name)
                out[name], token_weights[name] = ids[:room], w[:room]
            else:
                out[name] = self.response_ids(messages, prefix, text)[:room]
        result = {"prompt": prompt, "responses": out}
        if token_weights:
            result["weights"] = token_weights
        return result
