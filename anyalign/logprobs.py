"""Sequence log-probs over the shared token stream.

A batch row holds one prompt and one or more responses to it ("slots"). ``roles`` marks each position:
-1 padding, 0 prompt, k >= 1 response slot k. A slot attends to the prompt and to itself, never to
another slot, and its position ids continue from the end of the prompt, so one row with prompt + chosen +
rejected computes exactly what two separate forwards would, while the prompt and its media run once.

Packed rows (``data.packing``) hold several such groups (a prompt and its slots) one after another; the batch
then carries ``groups`` (``[rows, T]``: the group's number in its row, -1 padding), a position attends only
inside its own group, and each group's positions restart at 0. Without ``groups`` every row is one group.

Scored tokens are the response tokens (``target_seq >= 0``), never counted back from the end of a row.
Each is predicted by the hidden state at ``pred_pos``: the previous token of the same slot, or the last
prompt token for a slot's first token (not the previous slot's last token, which is what a naive shift by
one would use in the shared layout). Only those positions go through the LM head, so the
``[rows, length, vocab]`` logits tensor is never materialised.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask


def _allowed(q_role, k_role, q_idx, k_idx, q_group=None, k_group=None):
    """The slot rule, elementwise on broadcastable tensors: a query attends earlier-or-same positions of the
    prompt and of its own slot, in its own group when groups are given (packed rows). Shared by the dense
    mask and the flex ``mask_mod`` so the two cannot drift."""
    visible = (k_idx <= q_idx) & (q_role >= 0) & (k_role >= 0) & ((k_role == 0) | (k_role == q_role))
    if q_group is not None:
        visible = visible & (q_group == k_group)
    # padding queries see themselves only, so no softmax row is empty (empty rows give NaN under SDPA)
    return visible | ((k_idx == q_idx) & (q_role < 0))


def attention_mask_4d(roles: torch.Tensor, dtype: torch.dtype = torch.float32,
                      groups: torch.Tensor | None = None) -> torch.Tensor:
    """Float additive mask ``[rows, 1, T, T]``: 0 where query i may attend key j, finfo.min elsewhere.
    ``groups``: packed rows' group ids (None: one group per row).

    Float, not boolean: a boolean 4-D mask is silently wrong under eager attention in transformers 5.
    """
    idx = torch.arange(roles.shape[1], device=roles.device)
    g = (groups.unsqueeze(2), groups.unsqueeze(1)) if groups is not None else ()
    allowed = _allowed(roles.unsqueeze(2), roles.unsqueeze(1), idx[:, None], idx[None, :], *g)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=roles.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min).unsqueeze(1)


@functools.cache
def _compiled_create_block_mask():
    """Compiled on first use, not at import: compiling pulls in the compiler stack, which a CPU run never needs."""
    return torch.compile(create_block_mask)


def attention_block_mask(roles: torch.Tensor, groups: torch.Tensor | None = None) -> BlockMask:
    """The same rule as a flex-attention ``BlockMask``: block-sparse, so the kernel skips the blocks where one
    slot would see another (or, in packed rows, one group another) and no ``[rows, T, T]`` tensor is kept.

    Compiled on CUDA, where the eager builder would materialise the dense boolean mask on the way; eager on
    CPU, where compiling costs more than the mask (and flex attention is forward-only there anyway).
    """
    if groups is None:
        def mask_mod(b, h, q_idx, kv_idx):
            return _allowed(roles[b, q_idx], roles[b, kv_idx], q_idx, kv_idx)
    else:
        def mask_mod(b, h, q_idx, kv_idx):
            return _allowed(roles[b, q_idx], roles[b, kv_idx], q_idx, kv_idx, groups[b, q_idx], groups[b, kv_idx])

    rows, length = roles.shape
    build = _compiled_create_block_mask() if roles.is_cuda else create_block_mask
    return build(mask_mod, rows, None, length, length, device=roles.device)


@dataclass
class SeqLogps:
    """Per-sequence log-probs: ``logps[s]`` is the (token-weighted) sum, ``tokens[s]`` the token count."""

    logps: torch.Tensor
    tokens: torch.Tensor

    def select(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.logps[index], self.tokens[index]


def gather_logps(hidden: torch.Tensor, lm_head, batch: dict, softcap: float | None = None) -> SeqLogps:
    """Sum the log-probs of every scored token into its sequence.

    hidden: ``[rows, T, H]`` final hidden states; lm_head: the LM's output projection.
    """
    target_seq = batch["target_seq"]
    rows, cols = (target_seq >= 0).nonzero(as_tuple=True)
    h = hidden[rows, batch["pred_pos"][rows, cols]]
    logits = lm_head(h).float()
    if softcap:  # Gemma-style final logit soft-capping, declared in the model config
        logits = softcap * torch.tanh(logits / softcap)
    token_logps = logits.log_softmax(-1).gather(-1, batch["input_ids"][rows, cols, None]).squeeze(-1)
    seq = target_seq[rows, cols]
    n = batch["num_sequences"]
    weights = batch["token_weights"][rows, cols].to(token_logps.dtype)
    logps = token_logps.new_zeros(n).index_add(0, seq, token_logps * weights)
    tokens = token_logps.new_zeros(n).index_add(0, seq, torch.ones_like(token_logps))
    return SeqLogps(logps, tokens)
