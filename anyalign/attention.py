"""Segment attention for packed rows under SDPA: each group's attention on its own, no cross-group work.

Packed rows (``data.packing``) hold several groups (a prompt and its slots) one after another, and no position
attends outside its group. With the dense ``[rows, 1, T, T]`` mask the SDPA kernel still computes every
query-key pair of the row: on the CPU that is most of the step for long rows (the work grows with T^2, and
most of it is masked). Flex attention skips those blocks, but it has no backward on the CPU
(``docs/toolchain.md``). Here the rows are cut at the group boundaries instead: the decoder's linear layers
run on the packed rows as before, and each attention layer runs SDPA once per group, on that group's queries,
keys and values, cut further at its slots (``Group``): the prompt and the first response are plain causal
(SDPA's causal kernel, no mask), and each further response attends to the prompt and to itself (its queries
over the keys ``prompt | response``, a small mask). So the kernel computes only the query-key pairs the slot
rule allows, up to the causal kernel's blocks, instead of every pair of the row. Padding positions attend to
themselves only, as under the dense mask: their output is their own value. The result is the dense mask's,
up to float rounding.

How it reaches the attention layers: transformers passes the decoder's extra keyword arguments through every
decoder layer to the attention function (``ALL_ATTENTION_FUNCTIONS``). ``sdpa`` is registered here with a
wrapper that runs the segments when a ``Segments`` object arrives as ``anyalign_segments`` and calls
transformers' own SDPA function, unchanged, otherwise (every other caller, and every unpacked batch). The
wrapper counts its calls, so ``MultimodalLM`` can tell an LM that does not pass the keyword on (it then falls
back to the dense mask).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv

from .logprobs import attention_mask_4d

PAD = "pad"  # a run of padding positions: each attends to itself only


@dataclass
class Group:
    """One group's attention, cut at its slots: the prompt and the first slot are plain causal (positions
    ``[0, first)``); each further slot ``[start, end)`` attends to the prompt ``[0, prompt)`` and causally to
    itself, one SDPA call with the keys of both and ``masks[j]`` (``[1, 1, end - start, prompt + end - start]``,
    0 allowed, finfo.min not). ``dense``: the group's whole slot mask instead, for a group whose roles are not
    a prompt followed by slots 1, 2, ... in order (the collator never makes one)."""

    first: int
    prompt: int = 0
    slots: list = field(default_factory=list)
    masks: list = field(default_factory=list)
    dense: torch.Tensor | None = None


@dataclass
class Segments:
    """Packed rows cut into pieces for attention, row-major over the flattened ``rows * T`` positions.

    ``sizes``: each piece's length (they add up to ``rows * T``); ``pieces``: per piece, a ``Group`` or ``PAD``
    (a run of padding). ``calls``: attention layers that ran on these segments (set by the attention function)."""

    sizes: list[int]
    pieces: list
    calls: int = field(default=0)


def _slot_mask(prompt: int, n: int, dtype: torch.dtype, device) -> torch.Tensor:
    """Queries of an ``n``-token slot over the keys ``prompt | slot``: every prompt key, and the slot causally."""
    i, k = torch.arange(n, device=device)[:, None], torch.arange(prompt + n, device=device)[None, :]
    allowed = (k < prompt) | (k - prompt <= i)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[None, None]


def _group(roles: torch.Tensor, dtype: torch.dtype) -> Group:
    """A group's plan (``Group``) from its roles (0 prompt, k >= 1 slot k)."""
    run_roles, counts = torch.unique_consecutive(roles, return_counts=True)
    run_roles, counts = run_roles.tolist(), counts.tolist()
    if run_roles != list(range(len(run_roles))) or len(run_roles) < 2:
        return Group(first=len(roles), dense=attention_mask_4d(roles[None], dtype))
    prompt, first = counts[0], counts[0] + counts[1]
    group, start = Group(first=first, prompt=prompt), first
    for n in counts[2:]:
        group.slots.append((start, start + n))
        group.masks.append(_slot_mask(prompt, n, dtype, roles.device))
        start += n
    return group


def attention_segments(roles: torch.Tensor, groups: torch.Tensor, dtype: torch.dtype = torch.float32) -> Segments:
    """The pieces of packed rows (``roles`` and ``groups``: ``[rows, T]``, -1 padding): every group of every row,
    with its plan (``Group``), and every run of padding, in order."""
    rows, length = roles.shape
    key = (torch.arange(rows, device=groups.device)[:, None] * (int(groups.max()) + 2) + groups + 1).flatten()
    _, counts = torch.unique_consecutive(key, return_counts=True)
    sizes, pieces, start = [], [], 0
    flat_roles, flat_groups = roles.flatten(), groups.flatten()
    for n in counts.tolist():
        pieces.append(PAD if int(flat_groups[start]) < 0 else _group(flat_roles[start:start + n], dtype))
        sizes.append(n)
        start += n
    return Segments(sizes, pieces)


def _sdpa(q, k, v, mask, dropout, scaling):
    """SDPA on ``[n, heads, d]`` pieces; no mask: causal."""
    out = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                                         attn_mask=mask, dropout_p=dropout, scale=scaling, is_causal=mask is None)
    return out[0].transpose(0, 1)


_SDPA = AttentionInterface._global_mapping["sdpa"]
_SDPA = getattr(_SDPA, "original", _SDPA)  # transformers' own, even if this module were loaded twice


def segment_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                 is_causal: bool | None = None, anyalign_segments: Segments | None = None, **kwargs):
    """transformers' SDPA attention function, or, given ``anyalign_segments``, SDPA per group (the module
    docstring). ``attention_mask`` is not read then: the segments carry each group's mask."""
    if anyalign_segments is None:
        return _SDPA(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                     is_causal=is_causal, **kwargs)
    if kwargs.get("softcap") is not None or kwargs.get("position_bias") is not None:
        # the dense mask would not carry these either: a placeholder stands in for it (``MultimodalLM.forward``)
        raise ValueError("segment attention (packed rows under SDPA) takes no attention-logit softcap or position "
                         "bias; set data.packing: false")
    segments = anyalign_segments
    segments.calls += 1
    rep = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, rep), repeat_kv(value, rep)
    rows, heads, length, _ = query.shape
    # [rows, heads, T, d] -> [rows * T, heads, d]: one split along the positions cuts every row into its pieces
    q, k, v = (x.transpose(1, 2).reshape(rows * length, heads, x.shape[-1]) for x in (query, key, value))
    out = []
    for qs, ks, vs, piece in zip(q.split(segments.sizes), k.split(segments.sizes), v.split(segments.sizes),
                                 segments.pieces):
        if isinstance(piece, str):  # padding: each position's softmax holds itself only, so its output is its value
            out.append(vs)
        elif piece.dense is not None:
            out.append(_sdpa(qs, ks, vs, piece.dense, dropout, scaling))
        else:
            a, p = piece.first, piece.prompt
            out.append(_sdpa(qs[:a], ks[:a], vs[:a], None, dropout, scaling))  # prompt and first slot: causal
            for (start, end), mask in zip(piece.slots, piece.masks):  # each further slot: the prompt and itself
                out.append(_sdpa(qs[start:end], torch.cat([ks[:p], ks[start:end]]), torch.cat([vs[:p], vs[start:end]]),
                                 mask, dropout, scaling))
    return torch.cat(out).view(rows, length, heads, value.shape[-1]), None


segment_sdpa.original = _SDPA
AttentionInterface.register("sdpa", segment_sdpa)
