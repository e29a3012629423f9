"""Packed stacks: fast step-by-step inference for the transformer stacks of a trained model.

Several TransformerStacks of one shape become one PackedStacks whose every projection is
a single batched product over stacked weights (PackedLinear). A product with one row per
group reads its weights in the layout timed fastest on this machine; each step can be
recorded once with torch.jit.trace and replayed (TracedStep). Generation keeps a model's
packed stacks and traces between calls while its weights stay the same (`packed_stacks`,
`step_stacks`).

`cast_for_generation` puts a model in a narrower dtype for generation: batch-1 generation
reads every weight at every step, so halving the bytes halves the memory traffic that
bounds it. Attention sums stay float32 (PackedStacks) and sampling float64
(sample_tokens), so rounding enters only through the weights and the activations; int8
keeps float32 weights in the modules and reads int8 copies in the packed products
(Int8Linear).
"""
from __future__ import annotations

import dataclasses
import os
import statistics
import time
import warnings
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.attention import (EPS, KVCache, LinearMemory, feature_map, init_state,
                              softmax_attention)


GENERATION_DTYPES = ("float32", "bfloat16", "float16", "int8")


def cast_for_generation(model, dtype: str):
    """The model (a MusER or a Prior, in eval mode) prepared for generation in `dtype`, one
    of GENERATION_DTYPES: float32 changes nothing; bfloat16 and float16 cast its weights
    and buffers; int8 keeps them float32 and marks the model so that the generation step's
    linear layers read int8 weights with one float scale per output row (weight-only
    quantisation). For generation only: do not train or save the result."""
    if dtype not in GENERATION_DTYPES:
        raise ValueError(f"dtype must be one of {GENERATION_DTYPES}, got {dtype!r}")
    model.generation_int8 = dtype == "int8"
    if dtype in ("bfloat16", "float16"):
        model.to(getattr(torch, dtype))
    return model


# ---------------------------------------------------------------------------------------
# Packed products: G layers of one shape as one batched product.

# A one-row product (batch-1 generation) can read its weights in two layouts, W x^T over
# [G, out, in] ("rows") or x W over [G, in, out] ("cols"), and which is faster depends on
# the CPU's BLAS path, by a factor of several either way (bench/RESULTS.md). So the first
# one-row call of each shape times both on its own weights and keeps the faster, once per
# process for each shape, dtype and thread count. MUSER_ONE_ROW_LAYOUT=rows|cols fixes the choice (the two differ only by
# floating-point rounding).
ONE_ROW_LAYOUTS = ("rows", "cols")
ONE_ROW_LAYOUT_ENV = "MUSER_ONE_ROW_LAYOUT"
_one_row_layout_cache: dict[tuple, str] = {}


def one_row_layout_choices() -> dict[tuple, str]:
    """The layouts chosen so far: (groups, in, out, dtype, threads) -> 'rows' or 'cols'."""
    return dict(_one_row_layout_cache)


class PackedLinear:
    """G nn.Linear layers of one shape as one batched product: x [G, b, in] -> [G, b, out].

    Both weight layouts are kept: [G, in, out] for x @ W, the faster with several rows per
    group, and [G, out, in] for W x^T (a single group split in two along its outputs, so
    that it too is a batched matrix-vector product). A call with one row per group uses the
    layout measured fastest on this machine (see ONE_ROW_LAYOUTS). The copies are detached:
    rebuild after changing the weights.
    """

    def __init__(self, weight, bias):
        """weight [G, out, in], bias [G, out] (see `from_linears`)."""
        groups, out_features, in_features = weight.shape
        weight, bias = weight.detach(), bias.detach()
        self.groups, self.out_features = groups, out_features
        self.splits = 2 if groups == 1 and out_features % 2 == 0 else 1
        self.weight_rows = weight.reshape(groups * self.splits, out_features // self.splits,
                                          in_features).contiguous()
        self.bias_column = bias.reshape(groups * self.splits, -1, 1).contiguous()
        self.weight_cols = weight.transpose(1, 2).contiguous()          # [G, in, out]
        self.bias = bias.unsqueeze(1).contiguous()                      # [G, 1, out]
        self._layout = None                     # (threads, layout) of the last one-row call

    @classmethod
    def from_linears(cls, linears):
        return cls(torch.stack([l.weight for l in linears]), torch.stack([l.bias for l in linears]))

    def __call__(self, x):
        if x.shape[1] != 1:
            return torch.baddbmm(self.bias, x, self.weight_cols)
        threads = torch.get_num_threads()
        if self._layout is None or self._layout[0] != threads:
            self._layout = (threads, self.one_row_layout())
        if self._layout[1] == "cols":
            return torch.baddbmm(self.bias, x, self.weight_cols)
        return self._rows(x)

    def _rows(self, x):
        # W x + b as [G*splits, out/splits, in] @ [G*splits, in, 1], x^T taken as a
        # transposed view of contiguous rows (MKL's fast path needs that).
        if self.splits == 1:
            return torch.baddbmm(self.bias_column, self.weight_rows, x.contiguous().mT).mT
        x = x.contiguous().expand(self.splits, 1, x.shape[-1])
        out = torch.baddbmm(self.bias_column, self.weight_rows, x.mT)
        return out.view(self.groups, 1, self.out_features)

    def one_row_layout(self) -> str:
        """'rows' or 'cols' for one row per group: the environment's choice, else the
        faster on this machine (timed once per shape, dtype and thread count)."""
        fixed = os.environ.get(ONE_ROW_LAYOUT_ENV)
        if fixed:
            if fixed not in ONE_ROW_LAYOUTS:
                raise ValueError(f"{ONE_ROW_LAYOUT_ENV} must be one of {ONE_ROW_LAYOUTS}, got {fixed!r}")
            return fixed
        w = self.weight_cols
        if w.device.type != "cpu":
            return "rows"
        key = (*(int(n) for n in w.shape), w.dtype, torch.get_num_threads())
        if key not in _one_row_layout_cache:
            _one_row_layout_cache[key] = self._time_layouts()
        return _one_row_layout_cache[key]

    @torch.no_grad()
    def _time_layouts(self, rounds: int = 3, calls: int = 8, margin: float = 1.5) -> str:
        """Median time of `calls` one-row products per layout over `rounds` alternating
        rounds; 'cols' only when it is faster by `margin`. Timed here the weights sit in
        cache, as they do not in a generation step, so only a clear difference counts: a
        near tie keeps 'rows' (the layout used before timing), which also keeps the choice,
        and so the rounding, the same from run to run (a smaller margin let bfloat16's
        near ties flip between runs, bench/RESULTS.md)."""
        x = torch.randn(self.groups, 1, self.weight_cols.shape[1]).to(self.weight_cols.dtype)
        runs = {"rows": lambda: self._rows(x),
                "cols": lambda: torch.baddbmm(self.bias, x, self.weight_cols)}
        times = {name: [] for name in runs}
        for fn in runs.values():
            fn()                                            # first-call costs
        for _ in range(rounds):
            for name, fn in runs.items():
                start = time.perf_counter()
                for _ in range(calls):
                    fn()
                times[name].append(time.perf_counter() - start)
        rows, cols = (statistics.median(times[name]) for name in ONE_ROW_LAYOUTS)
        return "cols" if cols * margin < rows else "rows"


class _PackedNorm:
    """G LayerNorms of one width applied to x [G, b, d]."""

    def __init__(self, norms):
        self.eps = norms[0].eps
        self.shape = (norms[0].weight.shape[0],)
        self.single = len(norms) == 1
        if self.single:                     # LayerNorm's own affine: one kernel
            self.weight, self.bias = norms[0].weight.detach(), norms[0].bias.detach()
        else:
            self.weight = torch.stack([n.weight.detach() for n in norms]).unsqueeze(1)  # [G, 1, d]
            self.bias = torch.stack([n.bias.detach() for n in norms]).unsqueeze(1)

    def __call__(self, x):
        if self.single:
            return F.layer_norm(x, self.shape, self.weight, self.bias, self.eps)
        return torch.addcmul(self.bias, F.layer_norm(x, self.shape, eps=self.eps), self.weight)


# ---------------------------------------------------------------------------------------
# Packed stacks: several TransformerStacks stepped as one.

@dataclass
class LinearSums:
    """Linear-attention sums with the normaliser as one more value column, one row per
    (batch row, head): kvz[:, :, :M] = sum phi(k) v^T, kvz[:, :, M] = sum phi(k);
    [rows * H, D, M + 1]. One product phi(q) kvz gives numerator and denominator. The
    state of causal-linear self-attention, and the summary of a linear cross-attention
    memory. PackedStacks.select keeps rows of it."""
    kvz: torch.Tensor


class PackedStacks:
    """G TransformerStacks of identical shape, packed for fast step-by-step inference.

    Each projection of all G stacks becomes one batched product over stacked weights
    (query/key/value fused), which on small per-step batches is several times faster
    than G separate stacks. Inputs are [G, b, d_model]. The parameters stay in the
    original modules; this object holds detached copies, so build it after training
    (it has no dropout) and rebuild it when weights change. Its steps equal
    TransformerStack.step of each stack up to floating-point rounding.

    Causal-linear attention: the fused projection's outputs are ordered per head as
    (query, key, value, 1): the value projection gets one more output per head whose
    weight is 0 and bias 1, so that the state update phi(k) [v, 1]^T accumulates the
    normaliser with the values, and each head's pieces are views of one row. The state,
    one LinearSums per layer, is updated in place (it belongs to the generation loop;
    `init_state` and `select` make new ones).
    """

    @torch.no_grad()
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
            packed = {"qkv": self._fused_qkv([l.attention for l in layers]),
                      "out": PackedLinear.from_linears([l.attention.out_projection for l in layers]),
                      "norm_attention": _PackedNorm([l.norm_attention for l in layers]),
                      "linear1": PackedLinear.from_linears([l.linear1 for l in layers]),
                      "linear2": PackedLinear.from_linears([l.linear2 for l in layers]),
                      "norm_ff": _PackedNorm([l.norm_ff for l in layers])}
            if self.cross_kind is not None:
                cross = [l.cross_attention for l in layers]
                packed["cross_query"] = PackedLinear.from_linears([a.query_projection for a in cross])
                packed["cross_out"] = PackedLinear.from_linears([a.out_projection for a in cross])
                packed["norm_cross"] = _PackedNorm([l.norm_cross for l in layers])
                packed["cross_modules"] = cross
            self.layers.append(packed)
        self.norm = _PackedNorm([s.norm for s in stacks])

    def _fused_qkv(self, attentions):
        """Query, key and value projections of G layers as one product."""
        names = ("query_projection", "key_projection", "value_projection")
        weights = [torch.stack([getattr(a, n).weight for a in attentions]) for n in names]
        biases = [torch.stack([getattr(a, n).bias for a in attentions]) for n in names]
        if self.kind != "causal-linear":                 # [q | k | v]
            return PackedLinear(torch.cat(weights, 1), torch.cat(biases, 1))
        groups, _, width = weights[0].shape
        heads, e = self.n_heads, self.head_dim
        weights = [w.view(groups, heads, e, width) for w in weights]
        biases = [b.view(groups, heads, e) for b in biases]
        weights.append(weights[0].new_zeros(groups, heads, 1, width))
        biases.append(biases[0].new_ones(groups, heads, 1))
        # Per head: e query, e key, e value outputs and the constant 1.
        return PackedLinear(torch.cat(weights, 2).reshape(groups, heads * (3 * e + 1), width),
                            torch.cat(biases, 2).reshape(groups, heads * (3 * e + 1)))

    def init_state(self, batch: int, device, dtype) -> list:
        """Per-layer states for G x batch rows (group-major)."""
        rows = self.groups * batch
        if self.kind == "causal-linear":
            e = self.head_dim
            return [LinearSums(torch.zeros(rows * self.n_heads, e, e + 1, device=device,
                                           dtype=_sum_dtype(dtype))) for _ in self.layers]
        return [init_state(self.kind, rows, self.n_heads, self.head_dim, device, dtype)
                for _ in self.layers]

    @torch.no_grad()
    def summarize_memory(self, memory) -> list:
        """memory [G, b, S, d] (or [b, S, d], shared by all groups) -> per-layer summaries."""
        if memory.dim() == 3:
            memory = memory.unsqueeze(0).expand(self.groups, *memory.shape)
        summaries = []
        for packed in self.layers:
            per_group = [module.summarize_memory(memory[g])
                         for g, module in enumerate(packed["cross_modules"])]
            if isinstance(per_group[0], LinearMemory):
                kvz = torch.cat([torch.cat([s.kv, s.k_sum.unsqueeze(-1)], dim=-1)
                                 for s in per_group])                   # [G*b, H, D, M+1]
                summaries.append(LinearSums(kvz.flatten(0, 1)))
            else:
                summaries.append(type(per_group[0])(
                    *[torch.cat([getattr(s, f.name) for s in per_group])
                      for f in dataclasses.fields(per_group[0])]))
        return summaries

    @torch.no_grad()
    def step(self, x, state: list, memory: list | None = None):
        """x [G, b, d_model] -> ([G, b, d_model], new state)."""
        groups, batch, d = x.shape
        heads, e = self.n_heads, self.head_dim
        rows = groups * batch
        new_state = []
        for i, packed in enumerate(self.layers):
            if self.kind == "causal-linear":
                s = state[i]
                qkv = packed["qkv"](x).reshape(rows * heads, 3 * e + 1).to(s.kvz.dtype)
                qk = feature_map(qkv[:, : 2 * e])
                s.kvz.baddbmm_(qk[:, e:].unsqueeze(-1), qkv[:, 2 * e:].unsqueeze(1))
                a = _normalised(torch.bmm(qk[:, :e].unsqueeze(1), s.kvz))
            else:
                q, k, v = packed["qkv"](x).view(rows, 3, heads, e).unbind(1)
                s = KVCache(torch.cat([state[i].k, k.unsqueeze(2)], dim=2),
                            torch.cat([state[i].v, v.unsqueeze(2)], dim=2))
                a = softmax_attention(q.unsqueeze(2), s.k, s.v)
            new_state.append(s)
            x = packed["norm_attention"](x + packed["out"](a.reshape(groups, batch, d).to(x.dtype)))
            if self.cross_kind is not None:
                q = packed["cross_query"](x)
                if isinstance(memory[i], LinearSums):
                    q = feature_map(q.reshape(rows * heads, 1, e).to(memory[i].kvz.dtype))
                    a = _normalised(torch.bmm(q, memory[i].kvz))
                else:
                    a = softmax_attention(q.reshape(rows, heads, 1, e), memory[i].k, memory[i].v)
                x = packed["norm_cross"](x + packed["cross_out"](a.reshape(groups, batch, d).to(x.dtype)))
            y = F.gelu(packed["linear1"](x))
            x = packed["norm_ff"](x + packed["linear2"](y))
        return self.norm(x), new_state

    def select(self, state: list, index) -> list:
        """Keep batch rows `index` of per-layer states (or memory summaries)."""
        groups = self.groups
        kept = []
        for s in state:
            if isinstance(s, LinearSums):       # rows are (group, batch row, head)
                kept.append(LinearSums(_select_rows(s.kvz.view(-1, self.n_heads, *s.kvz.shape[1:]),
                                                    groups, index).flatten(0, 1)))
            else:
                kept.append(type(s)(*[_select_rows(getattr(s, f.name), groups, index)
                                      for f in dataclasses.fields(s)]))
        return kept


# ---------------------------------------------------------------------------------------
# Traced steps: a step of PackedStacks recorded by torch.jit.trace runs the same kernels
# without the Python between them, with bit-identical outputs, which saves a noticeable
# share of a small step (bench/RESULTS.md). MUSER_TRACE_STEPS=0 turns it off.
TRACE_STEPS_ENV = "MUSER_TRACE_STEPS"


class TracedStep:
    """PackedStacks.step for one input shape and dtype, recorded by torch.jit.trace.

    Only for recurrent states and memories that are all LinearSums (causal-linear self-
    attention, linear cross-attention): their tensors become the trace's inputs, updated
    in place as `step` updates them. The weights, the one-row layouts and the shapes are
    fixed at tracing: use it for inputs shaped like the example it was traced with, and
    build it again after changing the weights. `build` returns None where it does not
    apply or tracing fails (the caller then steps eagerly).
    """

    def __init__(self, fn):
        self.fn = fn

    @classmethod
    @torch.no_grad()
    def build(cls, stacks: "PackedStacks", x, state: list, memory: list | None = None):
        if os.environ.get(TRACE_STEPS_ENV, "1") == "0":
            return None
        sums = [*state, *(memory or [])]
        if not sums or not all(isinstance(s, LinearSums) for s in sums):
            return None
        n_state = len(state)

        def step(x, *tensors):
            memory = [LinearSums(t) for t in tensors[n_state:]] or None
            return stacks.step(x, [LinearSums(t) for t in tensors[:n_state]], memory)[0]
        example = [s.kvz.clone() for s in state] + [m.kvz for m in memory or []]
        # One eager step first: each product chooses its one-row layout by timing, which
        # must happen outside the tracer (its per-op overhead would skew the timing).
        step(x, *[t.clone() for t in example])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")         # TracerWarnings about fixed shapes
                fn = torch.jit.trace(step, (x, *example), check_trace=False)
        except Exception as exc:                        # e.g. a torch without TorchScript
            warnings.warn(f"stepping without a trace ({type(exc).__name__}: {exc})")
            return None
        return cls(fn)

    def __call__(self, x, state: list, memory: list | None = None):
        """Same as PackedStacks.step(x, state, memory) (state updated in place)."""
        return self.fn(x, *[s.kvz for s in state], *[m.kvz for m in memory or []]), state


# ---------------------------------------------------------------------------------------
# int8 weights (cast_for_generation(model, "int8")).

class Int8Linear:
    """A PackedLinear's product with int8 weights, per output row w = scale * q (symmetric,
    |q| <= 127): a quarter of float32's bytes to read at each step. x [G, b, in] float32
    -> [G, b, out]."""

    def __init__(self, packed: PackedLinear):
        weight = packed.weight_cols.transpose(1, 2).float()                 # [G, out, in]
        scale = weight.abs().amax(dim=2).clamp_min(1e-12) / 127
        self.q = [(w / s[:, None]).round().to(torch.int8).contiguous()
                  for w, s in zip(weight, scale)]
        self.scale = list(scale)
        self.bias = packed.bias.float()                                      # [G, 1, out]

    def __call__(self, x):
        x = x.float()
        out = torch.stack([torch._weight_int8pack_mm(x[g], self.q[g], self.scale[g])
                           for g in range(len(self.q))])
        return out + self.bias


def int8_weights(linear):
    """PackedLinear -> Int8Linear; anything else unchanged."""
    return Int8Linear(linear) if isinstance(linear, PackedLinear) else linear


def quantize_stacks(stacks: PackedStacks) -> PackedStacks:
    """Every linear layer of a PackedStacks' step in int8 (norms and attention sums stay)."""
    for packed in stacks.layers:
        for name, value in packed.items():
            packed[name] = int8_weights(value)
    return stacks


# ---------------------------------------------------------------------------------------
# Packed stacks and their traced steps per model, kept between generation calls while the
# model's weights stay the same: building and tracing them costs many steps' worth.
_generation_packs: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def packed_stacks(model, name: str, stacks) -> tuple[PackedStacks, dict]:
    """PackedStacks over `stacks` (modules of `model`), int8 when cast_for_generation asked
    for it, and a dict for its traced steps; both reused by later calls until a parameter
    of the model is replaced or changed in place (identity and version of every
    parameter are the key, so training, load_state_dict and .to() all rebuild them)."""
    key = (tuple((id(p), _version(p)) for p in model.parameters()),
           getattr(model, "generation_int8", False))
    entry = _generation_packs.get(model)
    if entry is None or entry["key"] != key:
        entry = _generation_packs[model] = {"key": key, "stacks": {}}
    if name not in entry["stacks"]:
        packed = PackedStacks(list(stacks))
        if key[1]:
            quantize_stacks(packed)
        entry["stacks"][name] = (packed, {})
    return entry["stacks"][name]


def _version(tensor) -> int:
    """In-place changes counted by autograd (-1 for an inference tensor, which has none:
    it cannot be changed outside inference mode either)."""
    try:
        return tensor._version
    except RuntimeError:
        return -1


def step_stacks(stacks: PackedStacks, traces: dict, x, state, memory=None, traced: bool = True):
    """stacks.step(x, state, memory), through a TracedStep for x's shape and dtype and the
    thread count when one applies (traced=False: always the eager step). A trace bakes in
    the one-row layouts timed when it was made, and those are chosen per thread count: a
    trace made while the machine was busy and 2 threads ran would keep layouts timed under
    that contention after the count dropped to 1 (bench/RESULTS.md)."""
    if traced:
        key = (tuple(x.shape), x.dtype, torch.get_num_threads())
        if key not in traces:
            traces[key] = TracedStep.build(stacks, x, state, memory)
        if traces[key] is not None:
            return traces[key](x, state, memory)
    return stacks.step(x, state, memory)


def _sum_dtype(dtype):
    """Linear-attention sums are kept in at least float32, as linear_attention computes them."""
    return torch.promote_types(dtype, torch.float32)


def _normalised(num_den, eps: float = EPS):
    """[..., M+1] (numerator, denominator) -> [..., M]."""
    return num_den[..., :-1] / (num_den[..., -1:] + eps)


def _select_rows(tensor, groups, index):
    grouped = tensor.view(groups, -1, *tensor.shape[1:])
    return grouped[:, index].flatten(0, 1)
