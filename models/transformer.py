"""Post-norm transformer layers and stacks (the fast-transformers layout), with step forms.

A layer is: self-attention, add, LayerNorm; optionally cross-attention to a memory, add,
LayerNorm; feed-forward (4x width, GELU), add, LayerNorm. Dropout 0.1 on every residual
branch. A stack ends with one more LayerNorm. `step` runs one position at a time with a
per-layer recurrent state, which gives the same outputs as `forward` on the whole prefix.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from models.attention import (KVCache, MultiHeadAttention, attend_summary, causal_linear_step,
                              feature_map, init_state, softmax_attention)


class PositionalEncoding(nn.Module):
    """Sinusoidal positions added to the input, then dropout."""

    def __init__(self, d_model: int, dropout: float, max_len: int = 1025):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        position = torch.arange(max_len, dtype=torch.float64).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float64)
                             * -(math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model, dtype=torch.float64)
        pe[:, 0::2] = torch.sin(position * div_term)
        pe[:, 1::2] = torch.cos(position * div_term)[:, : d_model // 2]
        # Recomputable, so it stays out of the state_dict.
        self.register_buffer("pe", pe.float(), persistent=False)

    def forward(self, x):                   # x [B, L, d_model]
        if x.shape[1] > self.pe.shape[0]:
            raise ValueError(f"sequence of {x.shape[1]} steps exceeds the positional "
                             f"encoding's {self.pe.shape[0]}")
        return self.dropout(x + self.pe[: x.shape[1]].to(x.dtype))

    def step(self, x, position: int):       # x [B, d_model], one position for the whole batch
        return self.dropout(x + self.pe[position].to(x.dtype))


class TransformerLayer(nn.Module):
    """Post-norm layer; with `cross_attention` set it is a decoder layer."""

    def __init__(self, d_model: int, n_heads: int, attention: str,
                 cross_attention: str | None = None, dropout: float = 0.1,
                 chunk_size: int = 64):
        super().__init__()
        self.attention = MultiHeadAttention(d_model, n_heads, attention, dropout, chunk_size)
        self.norm_attention = nn.LayerNorm(d_model)
        if cross_attention is not None:
            self.cross_attention = MultiHeadAttention(d_model, n_heads, cross_attention, dropout,
                                                      chunk_size)
            self.norm_cross = nn.LayerNorm(d_model)
        else:
            self.cross_attention = None
        self.linear1 = nn.Linear(d_model, 4 * d_model)
        self.linear2 = nn.Linear(4 * d_model, d_model)
        self.norm_ff = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def _feed_forward(self, x):
        y = self.dropout(F.gelu(self.linear1(x)))
        return self.norm_ff(x + self.dropout(self.linear2(y)))

    def forward(self, x, memory=None):
        x = self.norm_attention(x + self.dropout(self.attention(x, x, x)))
        if self.cross_attention is not None:
            x = self.norm_cross(x + self.dropout(self.cross_attention(x, memory, memory)))
        return self._feed_forward(x)

    def step(self, x, state, memory=None):
        """x [B, d_model]; `memory` is this layer's summarised memory (see summarize_memory)."""
        a, state = self.attention.step(x, state)
        x = self.norm_attention(x + self.dropout(a))
        if self.cross_attention is not None:
            x = self.norm_cross(x + self.dropout(self.cross_attention.attend_memory(x, memory)))
        return self._feed_forward(x), state


class TransformerStack(nn.Module):
    """`n_layers` post-norm layers and a final LayerNorm."""

    def __init__(self, d_model: int, n_layers: int, n_heads: int, attention: str,
                 cross_attention: str | None = None, dropout: float = 0.1,
                 chunk_size: int = 64):
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerLayer(d_model, n_heads, attention, cross_attention, dropout, chunk_size)
            for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x, memory=None):
        for layer in self.layers:
            x = layer(x, memory)
        return self.norm(x)

    def init_state(self, batch: int, device, dtype) -> list:
        return [layer.attention.init_state(batch, device, dtype) for layer in self.layers]

    def summarize_memory(self, memory) -> list:
        """Per-layer memory summaries, computed once per piece: each step is then O(1)."""
        return [layer.cross_attention.summarize_memory(memory) for layer in self.layers]

    def step(self, x, state: list, memory: list | None = None):
        new_state = []
        for i, layer in enumerate(self.layers):
            x, s = layer.step(x, state[i], None if memory is None else memory[i])
            new_state.append(s)
        return self.norm(x), new_state


def select_state(state, index):
    """Keep batch rows `index` of a (nested list of) recurrent states."""
    if isinstance(state, (list, tuple)):
        return [select_state(s, index) for s in state]
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state[index]
    return state.select(index)


# ---------------------------------------------------------------------------------------
# Fast inference stepping: several stacks of the same shape with their weights stacked.

def _stacked_linear(linears):
    """Weights [G, in, out] and biases [G, 1, out] of G nn.Linear layers."""
    weight = torch.stack([l.weight.detach().t() for l in linears]).contiguous()
    bias = torch.stack([l.bias.detach() for l in linears]).unsqueeze(1)
    return weight, bias


def _stacked_norm(norms):
    weight = torch.stack([n.weight.detach() for n in norms]).unsqueeze(1)
    bias = torch.stack([n.bias.detach() for n in norms]).unsqueeze(1)
    return weight, bias, norms[0].eps


def _fused_qkv(attentions):
    """Query, key and value projections of G attention layers as one [G, in, 3*d] matmul."""
    parts = [_stacked_linear([getattr(a, name) for a in attentions])
             for name in ("query_projection", "key_projection", "value_projection")]
    return torch.cat([w for w, _ in parts], dim=-1), torch.cat([b for _, b in parts], dim=-1)


class PackedStacks:
    """G TransformerStacks of identical shape, packed for fast step-by-step inference.

    Each projection of all G stacks becomes one batched matmul over stacked weights
    (query/key/value fused), which on small per-step batches is several times faster
    than G separate stacks. Inputs are [G, b, d_model]. The parameters stay in the
    original modules; this object holds detached copies, so build it after training
    (it has no dropout) and rebuild it when weights change. Its steps equal
    TransformerStack.step of each stack up to floating-point rounding.
    """

    def __init__(self, stacks):
        first = stacks[0].layers[0]
        self.groups = len(stacks)
        self.n_heads = first.attention.n_heads
        self.head_dim = first.attention.head_dim
        self.d_model = self.n_heads * self.head_dim
        self.kind = first.attention.kind
        self.cross_kind = first.cross_attention.kind if first.cross_attention is not None else None
        self.layers = []
        for i in range(len(stacks[0].layers)):
            layers = [s.layers[i] for s in stacks]
            packed = {"qkv": _fused_qkv([l.attention for l in layers]),
                      "out": _stacked_linear([l.attention.out_projection for l in layers]),
                      "norm_attention": _stacked_norm([l.norm_attention for l in layers]),
                      "linear1": _stacked_linear([l.linear1 for l in layers]),
                      "linear2": _stacked_linear([l.linear2 for l in layers]),
                      "norm_ff": _stacked_norm([l.norm_ff for l in layers])}
            if self.cross_kind is not None:
                cross = [l.cross_attention for l in layers]
                packed["cross_query"] = _stacked_linear([a.query_projection for a in cross])
                packed["cross_out"] = _stacked_linear([a.out_projection for a in cross])
                packed["norm_cross"] = _stacked_norm([l.norm_cross for l in layers])
                packed["cross_modules"] = cross
            self.layers.append(packed)
        self.norm = _stacked_norm([s.norm for s in stacks])

    @staticmethod
    def _linear(x, weight_bias):
        weight, bias = weight_bias
        return torch.baddbmm(bias, x, weight)

    @staticmethod
    def _norm(x, weight_bias_eps):
        weight, bias, eps = weight_bias_eps
        return F.layer_norm(x, x.shape[-1:], eps=eps) * weight + bias

    def init_state(self, batch: int, device, dtype) -> list:
        """Per-layer states for G x batch rows (group-major)."""
        return [init_state(self.kind, self.groups * batch, self.n_heads, self.head_dim, device,
                           dtype) for _ in self.layers]

    @torch.no_grad()
    def summarize_memory(self, memory) -> list:
        """memory [G, b, S, d] (or [b, S, d], shared by all groups) -> per-layer summaries."""
        if memory.dim() == 3:
            memory = memory.unsqueeze(0).expand(self.groups, *memory.shape)
        summaries = []
        for packed in self.layers:
            per_group = [module.summarize_memory(memory[g])
                         for g, module in enumerate(packed["cross_modules"])]
            summaries.append(type(per_group[0])(
                *[torch.cat([getattr(s, f.name) for s in per_group])
                  for f in dataclasses.fields(per_group[0])]))
        return summaries

    @torch.no_grad()
    def step(self, x, state: list, memory: list | None = None):
        """x [G, b, d_model] -> ([G, b, d_model], new state)."""
        groups, batch, d = x.shape
        heads, head_dim = self.n_heads, self.head_dim
        new_state = []
        for i, packed in enumerate(self.layers):
            qkv = self._linear(x, packed["qkv"]).view(groups * batch, 3, heads, head_dim)
            q, k, v = qkv.unbind(1)
            if self.kind == "causal-linear":
                a, s = causal_linear_step(feature_map(q), feature_map(k), v, state[i])
            else:
                s = KVCache(torch.cat([state[i].k, k.unsqueeze(2)], dim=2),
                            torch.cat([state[i].v, v.unsqueeze(2)], dim=2))
                a = softmax_attention(q.unsqueeze(2), s.k, s.v).squeeze(2)
            new_state.append(s)
            a = self._linear(a.reshape(groups, batch, d), packed["out"])
            x = self._norm(x + a, packed["norm_attention"])
            if self.cross_kind is not None:
                q = self._linear(x, packed["cross_query"]).view(groups * batch, heads, head_dim)
                a = attend_summary(q, memory[i]).reshape(groups, batch, d)
                x = self._norm(x + self._linear(a, packed["cross_out"]), packed["norm_cross"])
            y = F.gelu(self._linear(x, packed["linear1"]))
            x = self._norm(x + self._linear(y, packed["linear2"]), packed["norm_ff"])
        return self._norm(x, self.norm), new_state

    def select(self, state: list, index) -> list:
        """Keep batch rows `index` of per-layer states (or memory summaries)."""
        groups = self.groups
        return [type(s)(*[_select_rows(getattr(s, f.name), groups, index)
                          for f in dataclasses.fields(s)]) for s in state]


def _select_rows(tensor, groups, index):
    grouped = tensor.view(groups, -1, *tensor.shape[1:])
    return grouped[:, index].flatten(0, 1)
