"""Chat-template tokenization with media placeholders.

The prompt is rendered with ``add_generation_prompt=True``; a response is whatever the template adds
after that prefix when the assistant turn is appended (so end-of-turn tokens are scored, and the loss
mask comes from the template, never from counting back from the end). Each placeholder token is then
expanded to as many positions as its media item takes. Over-long samples lose response tokens only; a
prompt that does not fit, media included, makes the sample bad.
"""
from __future__ import annotations

from modalities import BadSample


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

    def response_ids(self, messages: list[dict], prefix: str, response: str) -> list[int]:
        full = self.render(messages, response)
        if not full.startswith(prefix):
            raise ValueError("the chat template does not render the prompt as a prefix of prompt + response; "
                             "set model.chat_template to one that does")
        ids = self._ids(full[len(prefix):])
        if any(i in self.media_token_ids.values() for i in ids):
            raise BadSample("a response contains a media placeholder")
        return ids

    def __call__(self, messages: list[dict], responses: dict[str, str], sizes: dict[str, list[int]]) -> dict:
        """sizes: tokens per media item, per modality, in prompt order.
        -> ``{"prompt": ids with placeholders expanded, "responses": {name: ids}}``."""
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
                raise BadSample(f"prompt has {n} {m} placeholder(s) but the sample has {have} {m} item(s)")
        room = self.max_length - len(prompt)
        if room < 1:
            raise BadSample(f"prompt takes {len(prompt)} tokens with its media; max_length is {self.max_length}")
        out = {name: self.response_ids(messages, prefix, text)[:room] for name, text in responses.items()}
        return {"prompt": prompt, "responses": out}
