"""Attention kinds and transformer stacks against naive evaluations of their formulas."""
import math

import pytest
import torch

from models.attention import (EPS, LinearState, MultiHeadAttention, causal_linear_attention,
                              causal_linear_step, feature_map, linear_attention,
                              softmax_attention)
from models.packed import PackedStacks
from models.transformer import PositionalEncoding, TransformerStack, select_state


def random_qkv(batch=2, heads=3, length=21, d=5, m=4, source=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    source = length if source is None else source
    q = feature_map(torch.randn(batch, heads, length, d, generator=g, dtype=torch.float64))
    k = feature_map(torch.randn(batch, heads, source, d, generator=g, dtype=torch.float64))
    v = torch.randn(batch, heads, source, m, generator=g, dtype=torch.float64)
    return q, k, v


def naive_linear(q, k, v, causal):
    """out_i = phi(q_i) . sum_j phi(k_j) v_j^T / (phi(q_i) . sum_j phi(k_j) + eps), one i at a time."""
    b, h, length, _ = q.shape
    out = torch.zeros(b, h, length, v.shape[-1], dtype=q.dtype)
    for bi in range(b):
        for hi in range(h):
            for i in range(length):
                last = i + 1 if causal else k.shape[2]
                s = sum(torch.outer(k[bi, hi, j], v[bi, hi, j]) for j in range(last))
                z = sum(k[bi, hi, j] for j in range(last))
                out[bi, hi, i] = q[bi, hi, i] @ s / (q[bi, hi, i] @ z + EPS)
    return out


def test_feature_map_is_elu_plus_one():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 3.0])
    expected = torch.where(x > 0, x + 1, torch.exp(x))
    assert torch.allclose(feature_map(x), expected)


def test_linear_attention_equals_naive_formula():
    q, k, v = random_qkv(length=9, source=13)
    assert torch.allclose(linear_attention(q, k, v), naive_linear(q, k, v, causal=False),
                          atol=1e-12)


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 21, 64])
def test_causal_linear_attention_equals_naive_formula(chunk_size):
    q, k, v = random_qkv(length=21)
    out = causal_linear_attention(q, k, v, chunk_size=chunk_size)
    assert torch.allclose(out, naive_linear(q, k, v, causal=True), atol=1e-12)


def test_causal_linear_blockwise_long_sequence_matches_single_block():
    q, k, v = random_qkv(batch=1, heads=2, length=300, d=8, m=8)
    assert torch.allclose(causal_linear_attention(q, k, v, chunk_size=64),
                          causal_linear_attention(q, k, v, chunk_size=300), atol=1e-10)


def test_causal_linear_step_equals_parallel():
    q, k, v = random_qkv(length=70)
    b, h, length, d = q.shape
    state = LinearState(torch.zeros(b, h, d, v.shape[-1], dtype=q.dtype),
                        torch.zeros(b, h, d, dtype=q.dtype))
    parallel = causal_linear_attention(q, k, v, chunk_size=16)
    for t in range(length):
        out, state = causal_linear_step(q[:, :, t], k[:, :, t], v[:, :, t], state)
        assert torch.allclose(out, parallel[:, :, t], atol=1e-12)


def test_softmax_attention_equals_naive_formula():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, 11, 4, generator=g, dtype=torch.float64) for _ in range(3))
    scores = q @ k.transpose(-1, -2) / math.sqrt(4)
    assert torch.allclose(softmax_attention(q, k, v), scores.softmax(-1) @ v, atol=1e-12)
    causal = scores.masked_fill(torch.ones(11, 11).triu(1).bool(), float("-inf"))
    assert torch.allclose(softmax_attention(q, k, v, causal=True), causal.softmax(-1) @ v,
                          atol=1e-12)


@pytest.mark.parametrize("kind", ["causal-linear", "causal-softmax"])
def test_causal_attention_layer_ignores_later_inputs(kind):
    torch.manual_seed(0)
    layer = MultiHeadAttention(16, 4, kind, chunk_size=4).double().eval()
    x = torch.randn(2, 19, 16, dtype=torch.float64)
    changed = x.clone()
    changed[:, 11:] = torch.randn(2, 8, 16, dtype=torch.float64)
    a, b = layer(x, x, x), layer(changed, changed, changed)
    assert torch.allclose(a[:, :11], b[:, :11], atol=1e-12)
    assert not torch.allclose(a[:, 11:], b[:, 11:])


@pytest.mark.parametrize("kind", ["causal-linear", "causal-softmax"])
def test_attention_layer_step_equals_parallel(kind):
    torch.manual_seed(0)
    layer = MultiHeadAttention(16, 4, kind, chunk_size=8).double().eval()
    x = torch.randn(3, 70, 16, dtype=torch.float64)
    parallel = layer(x, x, x)
    state = layer.init_state(3, x.device, x.dtype)
    for t in range(70):
        out, state = layer.step(x[:, t], state)
        assert torch.allclose(out, parallel[:, t], atol=1e-10)


@pytest.mark.parametrize("kind", ["linear", "softmax"])
def test_cross_attention_memory_summary_equals_parallel(kind):
    torch.manual_seed(0)
    layer = MultiHeadAttention(16, 4, kind).double().eval()
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    memory = torch.randn(2, 30, 16, dtype=torch.float64)
    parallel = layer(x, memory, memory)
    summary = layer.summarize_memory(memory)
    for t in range(9):
        assert torch.allclose(layer.attend_memory(x[:, t], summary), parallel[:, t], atol=1e-10)


def test_positional_encoding_formula():
    pe = PositionalEncoding(6, dropout=0.0, max_len=10)
    x = torch.zeros(1, 10, 6)
    out = pe(x)[0]
    pos, i = 7, 2                                   # dims 2 and 3 share frequency 1e4^(-2/6)
    freq = 10000 ** (-i / 6)
    assert math.isclose(out[pos, i].item(), math.sin(pos * freq), abs_tol=1e-6)
    assert math.isclose(out[pos, i + 1].item(), math.cos(pos * freq), abs_tol=1e-6)
    assert torch.equal(pe.step(torch.zeros(1, 6), pos)[0], out[pos])
    assert "pe" not in pe.state_dict()


STACKS = [("causal-linear", "linear"), ("causal-linear", None), ("causal-softmax", "softmax")]


@pytest.mark.parametrize("self_kind,cross_kind", STACKS)
def test_stack_step_equals_parallel_over_70_steps(self_kind, cross_kind):
    torch.manual_seed(0)
    stack = TransformerStack(16, 2, 4, self_kind, cross_kind, dropout=0.1,
                             chunk_size=8).double().eval()
    x = torch.randn(3, 70, 16, dtype=torch.float64)
    memory = torch.randn(3, 25, 16, dtype=torch.float64) if cross_kind else None
    parallel = stack(x, memory)
    state = stack.init_state(3, x.device, x.dtype)
    summary = stack.summarize_memory(memory) if cross_kind else None
    for t in range(70):
        out, state = stack.step(x[:, t], state, summary)
        assert torch.allclose(out, parallel[:, t], atol=1e-10), t


def test_stack_is_causal_and_post_norm():
    torch.manual_seed(0)
    stack = TransformerStack(16, 2, 4, "causal-linear", "linear", chunk_size=4).double().eval()
    x = torch.randn(2, 15, 16, dtype=torch.float64)
    memory = torch.randn(2, 6, 16, dtype=torch.float64)
    changed = x.clone()
    changed[:, 9:] += 1.0
    a, b = stack(x, memory), stack(changed, memory)
    assert torch.allclose(a[:, :9], b[:, :9], atol=1e-12)
    layer = stack.layers[0]
    assert layer.linear1.out_features == 4 * 16 and layer.cross_attention is not None
    # Post-norm: each sub-block's LayerNorm takes the residual sum, x = norm(x + f(x)); a
    # pre-norm layer (x = x + f(norm(x))) under the same final LayerNorm gives other values.
    # Random affine parameters make every norm's place show in the output.
    with torch.no_grad():
        for name, p in stack.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn_like(p))

    def post_norm_layer(layer, h):
        h = layer.norm_attention(h + layer.attention(h, h, h))
        h = layer.norm_cross(h + layer.cross_attention(h, memory, memory))
        return layer.norm_ff(h + layer.linear2(torch.nn.functional.gelu(layer.linear1(h))))

    h = x
    for layer in stack.layers:
        h = post_norm_layer(layer, h)
    assert torch.allclose(stack(x, memory), stack.norm(h), atol=1e-12)


def test_select_state_keeps_rows():
    state = [LinearState(torch.arange(4.0).view(4, 1, 1, 1), torch.arange(4.0).view(4, 1, 1))]
    kept = select_state(state, torch.tensor([3, 1]))
    assert kept[0].kv.flatten().tolist() == [3.0, 1.0]


@pytest.mark.parametrize("self_kind,cross_kind", STACKS)
def test_packed_stacks_step_equals_each_stack(self_kind, cross_kind):
    """Three stacks with different weights stepped together equal each one run alone."""
    torch.manual_seed(0)
    stacks = [TransformerStack(16, 2, 4, self_kind, cross_kind).double().eval() for _ in range(3)]
    packed = PackedStacks(stacks)
    x = torch.randn(3, 4, 66, 16, dtype=torch.float64)
    memory = torch.randn(3, 4, 9, 16, dtype=torch.float64) if cross_kind else None
    parallel = [s(x[g], None if memory is None else memory[g]) for g, s in enumerate(stacks)]
    state = packed.init_state(4, x.device, x.dtype)
    summary = packed.summarize_memory(memory) if cross_kind else None
    keep = torch.tensor([3, 0])
    for t in range(66):
        if t == 40:                          # drop rows mid-way, as generation does
            state = packed.select(state, keep)
            summary = packed.select(summary, keep) if cross_kind else None
            x, parallel = x[:, keep], [p[keep] for p in parallel]
        out, state = packed.step(x[:, :, t], state, summary)
        for g in range(3):
            assert torch.allclose(out[g], parallel[g][:, t], atol=1e-10), (t, g)
