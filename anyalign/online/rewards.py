"""Rewards for online DPO: score the K responses sampled for one prompt.

A reward is any class with ``__call__(sample, responses) -> [float, ...]`` (one finite number per response,
higher is better) and an optional ``bind(policy)``, called once with the policy before the first step (to
find its device). ``sample`` is ``{"key", "url", "messages", "prompt", "answer"?, "media"}``: ``prompt`` is the
last user message's text (media markers such as ``<video>`` left in it), ``answer`` the sample's reference
answer when its ``KEY.json`` has one, ``media`` the decoded media tensors. A reward that raises on a sample
skips that sample (counted and reported with the exception's text, like a corrupt sample); the others train.

Shipped (``model.online.reward.class_path``):

- ``ExactMatch``: 1 if the response matches the sample's ``answer`` (SQuAD normalisation: lower case,
  punctuation and articles dropped), else 0; ``contains: true`` accepts the answer anywhere in the response.
- ``TokenF1``: the F1 of the normalised words of the response and the answer (SQuAD's token F1).
- ``RewardModel``: a sequence-classification checkpoint (``AutoModelForSequenceClassification``) scoring the
  prompt and the response as text, rendered with the reward model's own chat template when it has one.
- ``Judge``: a causal LM prompted to compare two responses (the answer given as a reference when the sample
  has one); its probability of "A" against "B" for the next token is the verdict. Every pair is judged in both
  orders (position bias cancels), and a response's reward is its mean probability of beating the others.

``RewardModel`` and ``Judge`` read text only: the media reach them as their markers in the prompt.
"""
from __future__ import annotations

import itertools
from collections import Counter

import torch

from ..data.schema import answer_in, normalize_answer


def _answer(sample: dict) -> str:
    answer = sample.get("answer")
    if not isinstance(answer, str) or not answer:
        raise ValueError("the sample has no 'answer' (its KEY.json needs one for a rule-based reward)")
    return answer


class Reward:
    """Base class (optional: any callable class with the same ``__call__`` works)."""

    def bind(self, policy) -> None:
        """Called once with the policy before the first online step."""

    def __call__(self, sample: dict, responses: list[str]) -> list[float]:
        raise NotImplementedError


class ExactMatch(Reward):
    def __init__(self, contains: bool = False):
        """``contains``: the answer may appear anywhere in the response (its words, in order and contiguous)."""
        self.contains = contains

    def __call__(self, sample: dict, responses: list[str]) -> list[float]:
        answer = _answer(sample)
        if self.contains:
            return [float(answer_in(answer, r)) for r in responses]
        want = normalize_answer(answer)
        return [float(normalize_answer(r) == want) for r in responses]


def token_f1(answer: str, response: str) -> float:
    """SQuAD's token F1 of the normalised words (multisets) of ``response`` against ``answer``."""
    a, r = normalize_answer(answer), normalize_answer(response)
    common = sum((Counter(a) & Counter(r)).values())
    if not common:
        return 0.0
    precision, recall = common / len(r), common / len(a)
    return 2 * precision * recall / (precision + recall)


class TokenF1(Reward):
    def __call__(self, sample: dict, responses: list[str]) -> list[float]:
        answer = _answer(sample)
        return [token_f1(answer, r) for r in responses]


def _load(model_class, reward, policy):
    """A reward's checkpoint (``reward.path``): its tokenizer (a pad token, EOS if it has none) and its model, frozen,
    in eval mode, in ``reward.dtype`` on ``reward.device`` (``auto``: the policy's device)."""
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(reward.path, trust_remote_code=reward.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = model_class.from_pretrained(reward.path, dtype=reward.dtype, trust_remote_code=reward.trust_remote_code)
    model.eval().requires_grad_(False)
    device = torch.device(reward.device) if reward.device != "auto" else \
        next(policy.parameters()).device if policy is not None else torch.device("cpu")
    return tokenizer, model.to(device)


class RewardModel(Reward):
    def __init__(self, model: str, label: int | None = None, batch_size: int = 8, max_length: int = 2048,
                 torch_dtype: str = "float32", device: str = "auto", trust_remote_code: bool = False):
        """
        Args:
            model: a sequence-classification checkpoint (local directory or hub id).
            label: the logit that is the reward (default: the only one, or the last of several: "good").
            batch_size: responses scored per forward.
            max_length: longer texts are cut from the left (the response is kept).
            device: ``auto`` (the policy's device) or a torch device.
            trust_remote_code: allow custom model code from the checkpoint's repository.
        """
        self.path, self.label, self.batch_size, self.max_length = model, label, batch_size, max_length
        self.dtype, self.device, self.trust_remote_code = getattr(torch, torch_dtype), device, trust_remote_code
        self.model = None

    def bind(self, policy) -> None:
        from transformers import AutoModelForSequenceClassification
        self.tokenizer, self.model = _load(AutoModelForSequenceClassification, self, policy)
        self.tokenizer.truncation_side = "left"
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        n = self.model.config.num_labels
        if self.label is not None and not -n <= self.label < n:
            raise ValueError(f"model.online.reward.init_args.label={self.label}, but {self.path} has {n} labels")

    def text(self, sample: dict, response: str) -> str:
        """The prompt and the response as the reward model reads them."""
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                sample["messages"] + [{"role": "assistant", "content": response}], tokenize=False)
        return f"{sample['prompt']}\n\n{response}"

    @torch.no_grad()
    def __call__(self, sample: dict, responses: list[str]) -> list[float]:
        if self.model is None:
            self.bind(None)
        label = self.label if self.label is not None else -1
        out = []
        device = next(self.model.parameters()).device
        for start in range(0, len(responses), self.batch_size):
            texts = [self.text(sample, r) for r in responses[start:start + self.batch_size]]
            enc = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                                 max_length=self.max_length, add_special_tokens=not getattr(self.tokenizer, "chat_template", None))
            logits = self.model(**enc.to(device)).logits.float()
            out.extend(logits[:, label].tolist())
        return out


JUDGE_TEMPLATE = ("Which response answers the question better? Reply with the letter A or B only.\n\n"
                  "Question: {prompt}\n{reference}\nResponse A: {a}\n\nResponse B: {b}")


class Judge(Reward):
    def __init__(self, model: str, template: str = JUDGE_TEMPLATE, both_orders: bool = True,
                 torch_dtype: str = "float32", device: str = "auto", trust_remote_code: bool = False):
        """
        Args:
            model: a causal LM with a chat template (local directory or hub id), e.g. an instruction-tuned model.
            template: the user message; ``{prompt}``, ``{reference}`` (``"Reference answer: ..."`` when the sample
                has an ``answer``, else empty), ``{a}`` and ``{b}`` are filled in.
            both_orders: judge every pair as (A, B) and (B, A) and average, so the position does not count.
            device: ``auto`` (the policy's device) or a torch device.
        """
        for field in ("{prompt}", "{a}", "{b}"):
            if field not in template:
                raise ValueError(f"model.online.reward.init_args.template has no {field}")
        self.path, self.template, self.both_orders = model, template, both_orders
        self.dtype, self.device, self.trust_remote_code = getattr(torch, torch_dtype), device, trust_remote_code
        self.model = None

    def bind(self, policy) -> None:
        from transformers import AutoModelForCausalLM
        self.tokenizer, self.model = _load(AutoModelForCausalLM, self, policy)
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"model.online.reward: the judge {self.path} has no chat template")
        self.tokenizer.padding_side = "left"
        self.letters = []
        for letter in ("A", "B"):
            ids = self.tokenizer(letter, add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                raise ValueError(f"model.online.reward: the judge's tokenizer splits {letter!r} into {len(ids)} tokens")
            self.letters.append(ids[0])

    @torch.no_grad()
    def prefer_first(self, sample: dict, pairs: list[tuple[str, str]]) -> list[float]:
        """P(A) / (P(A) + P(B)) for each (A, B) pair: the judge's probability that A is the better response."""
        reference = f"Reference answer: {sample['answer']}\n" if sample.get("answer") else ""
        texts = [self.tokenizer.apply_chat_template(
            [{"role": "user", "content": self.template.format(prompt=sample["prompt"], reference=reference, a=a, b=b)}],
            tokenize=False, add_generation_prompt=True) for a, b in pairs]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = enc.to(next(self.model.parameters()).device)
        logits = self.model(**enc).logits[:, -1].float()
        return logits[:, self.letters].softmax(-1)[:, 0].tolist()

    def __call__(self, sample: dict, responses: list[str]) -> list[float]:
        if self.model is None:
            self.bind(None)
        k = len(responses)
        pairs = list(itertools.permutations(range(k), 2) if self.both_orders else itertools.combinations(range(k), 2))
        wins = [[0.0] * k for _ in range(k)]  # wins[i][j]: P(i beats j), averaged over the orders judged
        seen = [[0] * k for _ in range(k)]
        for (i, j), p in zip(pairs, self.prefer_first(sample, [(responses[i], responses[j]) for i, j in pairs])):
            for a, b, q in ((i, j, p), (j, i, 1.0 - p)):
                wins[a][b] += q
                seen[a][b] += 1
        return [sum(wins[i][j] / seen[i][j] for j in range(k) if j != i) / (k - 1) for i in range(k)]
