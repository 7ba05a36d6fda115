"""Segment attention for packed rows under SDPA: each group's attention on its own, no cross-group work.

Packed rows (``data.packing``) hold several groups (a prompt and its slots) one after another, and no position
attends outside its group. With the dense ``[rows, 1, T, T]`` mask the SDPA kernel still computes every
query-key pair of the row: on the CPU that is most of the step for long rows (the work grows with T^2, and
most of it is masked). Flex attention skips those blocks, but it has no backward on the CPU
(``docs/toolchain.md``). Here the rows are cut at the group boundaries instead: the decoder's linear layers
run on the packed rows as before, and each attention layer runs SDPA once per group, on that group's queries,
keys and values with the group's own slot mask (``attention_mask_4d`` of its ``roles``; a group with one
response is plain causal and needs no mask). Padding positions attend to themselves only, as under the dense
mask: their output is their own value. The result is the dense mask's, up to float rounding.

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
class Segments:
    """Packed rows cut into pieces for attention, row-major over the flattened ``rows * T`` positions.

    ``sizes``: each piece's length (they add up to ``rows * T``); ``masks``: per piece, the group's float slot
    mask ``[1, 1, n, n]``, ``None`` for a plain causal group (one response), or ``PAD`` for a run of padding.
    ``calls``: attention layers that ran on these segments (set by the attention function)."""

    sizes: list[int]
    masks: list
    calls: int = field(default=0)


def attention_segments(roles: torch.Tensor, groups: torch.Tensor, dtype: torch.dtype = torch.float32) -> Segments:
    """The pieces of packed rows (``roles`` and ``groups``: ``[rows, T]``, -1 padding): every group of every row
    and every run of padding, in order, with the group's own slot mask (the dense mask's block on the diagonal)."""
    rows, length = roles.shape
    key = (torch.arange(rows, device=groups.device)[:, None] * (int(groups.max()) + 2) + groups + 1).flatten()
    runs, counts = torch.unique_consecutive(key, return_counts=True)
    sizes, masks, start = [], [], 0
    flat_roles, flat_groups = roles.flatten(), groups.flatten()
    for n in counts.tolist():
        if int(flat_groups[start]) < 0:
            masks.append(PAD)
        else:
            r = flat_roles[start:start + n]
            masks.append(None if int(r.max()) <= 1 else attention_mask_4d(r[None], dtype))
        sizes.append(n)
        start += n
    return Segments(sizes, masks)


_SDPA = AttentionInterface._global_mapping["sdpa"]
_SDPA = getattr(_SDPA, "original", _SDPA)  # transformers' own, even if this module were loaded twice


def segment_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                 is_causal: bool | None = None, anyalign_segments: Segments | None = None, **kwargs):
    """transformers' SDPA attention function, or, given ``anyalign_segments``, SDPA per group (the module
    docstring). ``attention_mask`` is not read then: the segments carry each group's mask."""
    if anyalign_segments is None:
        return _SDPA(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                     is_causal=is_causal, **kwargs)
    segments = anyalign_segments
    segments.calls += 1
    rep = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, rep), repeat_kv(value, rep)
    rows, heads, length, _ = query.shape
    # [rows, heads, T, d] -> [rows * T, heads, d]: one split along the positions cuts every row into its pieces
    q, k, v = (x.transpose(1, 2).reshape(rows * length, heads, x.shape[-1]) for x in (query, key, value))
    out = []
    for qs, ks, vs, mask in zip(q.split(segments.sizes), k.split(segments.sizes), v.split(segments.sizes),
                                segments.masks):
        if isinstance(mask, str):  # padding: each position's softmax holds itself only, so its output is its value
            out.append(vs)
            continue
        o = F.scaled_dot_product_attention(qs.transpose(0, 1)[None], ks.transpose(0, 1)[None], vs.transpose(0, 1)[None],
                                           attn_mask=mask, dropout_p=dropout, scale=scaling, is_causal=mask is None)
        out.append(o[0].transpose(0, 1))
    return torch.cat(out).view(rows, length, heads, value.shape[-1]), None


segment_sdpa.original = _SDPA
AttentionInterface.register("sdpa", segment_sdpa)
