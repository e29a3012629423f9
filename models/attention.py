"""Attention kinds of the linear transformer (Katharopoulos et al. 2020), in plain PyTorch.

Tensors inside this module use the layout [batch, heads, length, head_dim].

- `linear`:        out_i = phi(q_i) . sum_j phi(k_j) v_j^T / (phi(q_i) . sum_j phi(k_j) + eps)
- `causal-linear`: the same with the sums restricted to j <= i. The parallel form works in
  blocks of `chunk_size` steps (exact inside a block, a running state between blocks), so
  memory grows like length x chunk_size instead of length x head_dim^2. The recurrent form
  keeps S = sum phi(k) v^T and z = sum phi(k): constant work per step.
- `softmax` / `causal-softmax` (aliases `full`, `causal-full`): exact scaled dot-product
  attention through PyTorch's SDPA; its step form keeps a key/value cache.
phi(x) = elu(x) + 1, eps = 1e-6, as in the fast-transformers library.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-6
KINDS = ("linear", "causal-linear", "softmax", "causal-softmax")
_ALIASES = {"full": "softmax", "causal-full": "causal-softmax"}
# The names a configuration accepts, aliases included: for encoders and cross-attention,
# and for the causal self-attention of decoders.
ENCODER_KINDS = ("linear", "softmax", "full")
DECODER_KINDS = tuple(f"causal-{kind}" for kind in ENCODER_KINDS)


def canonical_kind(kind: str) -> str:
    kind = _ALIASES.get(kind, kind)
    if kind not in KINDS:
        raise ValueError(f"unknown attention kind {kind!r}; choose from {KINDS + tuple(_ALIASES)}")
    return kind


def feature_map(x: torch.Tensor) -> torch.Tensor:
    """phi(x) = elu(x) + 1: positive features, so the normaliser never vanishes."""
    return F.elu(x) + 1


def _upcast(*tensors):
    """Linear-attention sums lose precision in half types; compute those in float32."""
    if tensors[0].dtype in (torch.float16, torch.bfloat16):
        return tuple(t.float() for t in tensors)
    return tensors


def linear_attention(q, k, v, eps: float = EPS):
    """Non-causal linear attention. q, k: phi-mapped [B, H, L|S, D]; v: [B, H, S, M]."""
    dtype = v.dtype
    q, k, v = _upcast(q, k, v)
    kv = torch.einsum("bhsd,bhsm->bhdm", k, v)
    k_sum = k.sum(dim=2)                                          # [B, H, D]
    num = torch.matmul(q, kv)                                     # [B, H, L, M]
    den = torch.einsum("bhld,bhd->bhl", q, k_sum).unsqueeze(-1)
    return (num / (den + eps)).to(dtype)


def causal_linear_attention(q, k, v, eps: float = EPS, chunk_size: int = 64):
    """Causal linear attention, blockwise. q, k: phi-mapped [B, H, L, D]; v: [B, H, L, M].

    Within a block of C steps the contribution of earlier steps of the same block is a
    masked C x C product; everything before the block enters through the running sums
    S = sum k v^T and z = sum k up to the block start (exclusive cumulative sums over
    blocks). No [B, H, L, D, M] tensor is ever built.
    """
    dtype = v.dtype
    q, k, v = _upcast(q, k, v)
    batch, heads, length, d = q.shape
    m = v.shape[-1]
    c = max(1, min(chunk_size, length))
    n = math.ceil(length / c)
    pad = n * c - length
    if pad:
        # Zero keys/values at the end only ever follow the real steps, so they change nothing.
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    qc = q.reshape(batch, heads, n, c, d)
    kc = k.reshape(batch, heads, n, c, d)
    vc = v.reshape(batch, heads, n, c, m)

    kv_block = torch.matmul(kc.transpose(-1, -2), vc)            # [B, H, N, D, M]
    k_block = kc.sum(dim=3)                                       # [B, H, N, D]
    # Sums over all earlier blocks (exclusive prefix sums).
    kv_before = torch.cumsum(F.pad(kv_block, (0, 0, 0, 0, 1, 0))[:, :, :-1], dim=2)
    k_before = torch.cumsum(F.pad(k_block, (0, 0, 1, 0))[:, :, :-1], dim=2)

    scores = torch.matmul(qc, kc.transpose(-1, -2))               # [B, H, N, C, C]
    scores = scores * torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
    num = torch.matmul(scores, vc) + torch.matmul(qc, kv_before)
    den = scores.sum(dim=-1) + torch.einsum("bhncd,bhnd->bhnc", qc, k_before)
    out = num / (den.unsqueeze(-1) + eps)
    return out.reshape(batch, heads, n * c, m)[:, :, :length].to(dtype)


def softmax_attention(q, k, v, causal: bool = False, dropout_p: float = 0.0):
    """Exact scaled dot-product attention (softmax temperature 1/sqrt(head_dim))."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, dropout_p=dropout_p)


# ---------------------------------------------------------------------------------------
# Recurrent state for step-by-step decoding. Each state knows how to keep only some rows
# of the batch (`select`), so generation can drop finished pieces.

@dataclass
class LinearState:
    """Running sums of causal-linear attention: kv = sum phi(k) v^T, k_sum = sum phi(k)."""
    kv: torch.Tensor        # [B, H, D, M]
    k_sum: torch.Tensor     # [B, H, D]

    def select(self, index):
        return LinearState(self.kv[index], self.k_sum[index])


@dataclass
class KVCache:
    """Keys and values seen so far, for causal softmax attention."""
    k: torch.Tensor         # [B, H, t, D]
    v: torch.Tensor         # [B, H, t, M]

    def select(self, index):
        return KVCache(self.k[index], self.v[index])


@dataclass
class LinearMemory:
    """Summary of a fixed memory for linear cross-attention: O(1) work per query."""
    kv: torch.Tensor        # [B, H, D, M]
    k_sum: torch.Tensor     # [B, H, D]

    def select(self, index):
        return LinearMemory(self.kv[index], self.k_sum[index])


def init_state(kind: str, batch: int, heads: int, head_dim: int, device, dtype):
    """Empty recurrent state of causal self-attention of `kind`."""
    if kind == "causal-linear":
        return LinearState(torch.zeros(batch, heads, head_dim, head_dim, device=device, dtype=dtype),
                           torch.zeros(batch, heads, head_dim, device=device, dtype=dtype))
    if kind == "causal-softmax":
        empty = torch.zeros(batch, heads, 0, head_dim, device=device, dtype=dtype)
        return KVCache(empty, empty)
    raise ValueError(f"{kind} attention has no recurrent form")


def causal_linear_step(q, k, v, state: LinearState, eps: float = EPS):
    """One step of causal-linear attention. q, k: phi-mapped [B, H, D]; v: [B, H, M]."""
    dtype = v.dtype
    q, k, v = _upcast(q, k, v)
    kv = state.kv + k.unsqueeze(-1) * v.unsqueeze(-2)
    k_sum = state.k_sum + k
    num = torch.einsum("bhd,bhdm->bhm", q, kv)
    den = (q * k_sum).sum(dim=-1, keepdim=True)
    return (num / (den + eps)).to(dtype), LinearState(kv, k_sum)


class MultiHeadAttention(nn.Module):
    """Projections around an attention kind, laid out like fast-transformers' AttentionLayer."""

    def __init__(self, d_model: int, n_heads: int, kind: str, dropout: float = 0.0,
                 chunk_size: int = 64):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by {n_heads} heads")
        self.kind = canonical_kind(kind)
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.dropout = dropout              # attention-weight dropout, softmax kinds only
        self.chunk_size = chunk_size
        self.query_projection = nn.Linear(d_model, d_model)
        self.key_projection = nn.Linear(d_model, d_model)
        self.value_projection = nn.Linear(d_model, d_model)
        self.out_projection = nn.Linear(d_model, d_model)

    @property
    def is_causal(self) -> bool:
        return self.kind.startswith("causal")

    def _heads(self, x):                    # [B, L, H*E] -> [B, H, L, E]
        return x.view(*x.shape[:-1], self.n_heads, self.head_dim).transpose(-2, -3)

    def _merge(self, x):                    # [B, H, L, E] -> [B, L, H*E]
        x = x.transpose(-2, -3)
        return x.reshape(*x.shape[:-2], self.n_heads * self.head_dim)

    def forward(self, queries, keys, values):
        """queries [B, L, d_model]; keys, values [B, S, d_model] -> [B, L, d_model]."""
        q = self._heads(self.query_projection(queries))
        k = self._heads(self.key_projection(keys))
        v = self._heads(self.value_projection(values))
        if self.kind == "linear":
            out = linear_attention(feature_map(q), feature_map(k), v)
        elif self.kind == "causal-linear":
            out = causal_linear_attention(feature_map(q), feature_map(k), v,
                                          chunk_size=self.chunk_size)
        else:
            out = softmax_attention(q, k, v, causal=self.is_causal,
                                    dropout_p=self.dropout if self.training else 0.0)
        return self.out_projection(self._merge(out))

    # -- step-by-step decoding -----------------------------------------------------------

    def init_state(self, batch: int, device, dtype):
        """Empty recurrent state for causal self-attention."""
        return init_state(self.kind, batch, self.n_heads, self.head_dim, device, dtype)

    def step(self, x, state):
        """Causal self-attention for one new step. x [B, d_model] -> ([B, d_model], state)."""
        q = self.query_projection(x).view(-1, self.n_heads, self.head_dim)
        k = self.key_projection(x).view(-1, self.n_heads, self.head_dim)
        v = self.value_projection(x).view(-1, self.n_heads, self.head_dim)
        if self.kind == "causal-linear":
            out, state = causal_linear_step(feature_map(q), feature_map(k), v, state)
        elif self.kind == "causal-softmax":
            state = KVCache(torch.cat([state.k, k.unsqueeze(2)], dim=2),
                            torch.cat([state.v, v.unsqueeze(2)], dim=2))
            out = softmax_attention(q.unsqueeze(2), state.k, state.v).squeeze(2)
        else:
            raise ValueError(f"{self.kind} attention has no recurrent form")
        return self.out_projection(out.reshape(-1, self.n_heads * self.head_dim)), state

    def summarize_memory(self, memory):
        """Precompute what every query needs from a fixed memory [B, S, d_model]."""
        k = self._heads(self.key_projection(memory))
        v = self._heads(self.value_projection(memory))
        if self.kind == "linear":
            k, v = _upcast(feature_map(k), v)
            return LinearMemory(torch.einsum("bhsd,bhsm->bhdm", k, v), k.sum(dim=2))
        if self.kind == "softmax":
            return KVCache(k, v)
        raise ValueError(f"{self.kind} attention cannot attend to a memory step by step")

    def attend_memory(self, x, memory):
        """Cross-attention of one query step x [B, d_model] to a summarised memory."""
        q = self.query_projection(x).view(-1, self.n_heads, self.head_dim)
        out = attend_summary(q, memory)
        return self.out_projection(out.reshape(-1, self.n_heads * self.head_dim))


def attend_summary(q, memory):
    """Projected queries q [B, H, E] (before the feature map) against a memory summary:
    LinearMemory (linear attention, O(1) in the memory length) or KVCache (softmax)."""
    if isinstance(memory, LinearMemory):
        dtype = q.dtype
        (q,) = _upcast(feature_map(q))
        num = torch.einsum("bhd,bhdm->bhm", q, memory.kv)
        den = (q * memory.k_sum).sum(dim=-1, keepdim=True)
        return (num / (den + EPS)).to(dtype)
    return softmax_attention(q.unsqueeze(2), memory.k, memory.v).squeeze(2)
