"""Post-norm transformer layers and stacks (the fast-transformers layout), with step forms.

A layer is: self-attention, add, LayerNorm; optionally cross-attention to a memory, add,
LayerNorm; feed-forward (4x width, GELU), add, LayerNorm. Dropout 0.1 on every residual
branch. A stack ends with one more LayerNorm. `step` runs one position at a time with a
per-layer recurrent state, which gives the same outputs as `forward` on the whole prefix.
Generation steps trained stacks through models/packed.py instead, which stacks their weights.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.attention import MultiHeadAttention


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
