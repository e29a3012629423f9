"""The state dicts of the authors' released models, as key -> shape data, and a forward pass
written directly from such a state dict.

Derived by reading (public repositories):
- Tayjsl97/MusER models/MusER_TRANS_CA_GE.py (class VQ_VAE), models/Prior.py (VQ_prior),
  models/model_utils.py (Embeddings: `lut`; PositionalEncoding: buffer `pe` [1, 2000, d]
  inside nn.Sequential, so `<name>.0.pe`; VectorQuantizerEMA: buffer `embeddings`, and two
  ExponentialMovingAverage children `ema_dw`, `ema_cluster_size` with buffer `hidden`; their
  step `counter` is a plain attribute, not saved), MusER_train.py / Prior_train.py
  (N=8, H=8, widths 128/256, 512 codes x 112, gelu, linear / causal-linear).
- idiap/fast-transformers fast_transformers/builders/transformer_builders.py (a stack is
  `layers.<i>` plus a final LayerNorm `norm`), transformers.py (encoder layer: attention,
  linear1, linear2, norm1, norm2; decoder layer: self_attention, cross_attention, linear1,
  linear2, norm1, norm2, norm3; post-norm), attention/attention_layer.py (query_projection,
  key_projection, value_projection, out_projection; the inner attention and the elu+1
  feature map hold no tensors), attention/linear_attention.py and
  causal_linear_attention.py (eps 1e-6).
Their hard-coded sizes are the defaults below; the small sizes used by the forward check
keep the same structure.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Their input2emb order and widths (type first), and vocabularies hard-coded in VQ_VAE.
EMBEDDINGS = (("type_emb", 4, 32), ("tempo_emb", 56, 128), ("chord_emb", 135, 256),
              ("bar_beat_emb", 18, 64), ("pitch_emb", 87, 512), ("duration_emb", 18, 128),
              ("velocity_emb", 42, 128), ("emotion_emb", 5, 128))
# Column of each of their embeddings in a compound word (tempo, chord, bar-beat, type, ...).
WORD_COLUMN = {"type_emb": 3, "tempo_emb": 0, "chord_emb": 1, "bar_beat_emb": 2, "pitch_emb": 4,
               "duration_emb": 5, "velocity_emb": 6, "emotion_emb": 7}
# (decoder, head, latent dims) in the order their forward() calls subDecoder.
SUBDECODERS = (("type_decoder", "predict_type", 3), ("tempo_decoder", "predict_tempo", 0),
               ("chord_decoder", "predict_chord", 1), ("beat_decoder", "predict_bar_beat", 2),
               ("pitch_decoder", "predict_pitch", 4), ("duration_decoder", "predict_duration", 5),
               ("velocity_decoder", "predict_velocity", 6))

PAPER = dict(embeddings=EMBEDDINGS, N=8, H=8, encoder_width=128, decoder_width=256,
             num_embeddings=512, embedding_dim=112, dr_width=1024, dr_layers=4, dr_heads=4,
             decoder_layers=4, sub_layers=2, pe_rows=2000)


def _linear(prefix, n_in, n_out):
    return {f"{prefix}.weight": (n_out, n_in), f"{prefix}.bias": (n_out,)}


def _norm(prefix, d):
    return {f"{prefix}.weight": (d,), f"{prefix}.bias": (d,)}


def _attention(prefix, d):
    out = {}
    for name in ("query_projection", "key_projection", "value_projection", "out_projection"):
        out.update(_linear(f"{prefix}.{name}", d, d))
    return out


def encoder_spec(prefix, n_layers, d):
    """TransformerEncoderBuilder(...).get(), feed-forward 4 d."""
    out = {}
    for i in range(n_layers):
        p = f"{prefix}.layers.{i}"
        out.update(_attention(f"{p}.attention", d))
        out.update(_linear(f"{p}.linear1", d, 4 * d))
        out.update(_linear(f"{p}.linear2", 4 * d, d))
        out.update(_norm(f"{p}.norm1", d))
        out.update(_norm(f"{p}.norm2", d))
    out.update(_norm(f"{prefix}.norm", d))
    return out


def decoder_spec(prefix, n_layers, d):
    """TransformerDecoderBuilder(...).get(); the memory is projected to d beforehand."""
    out = {}
    for i in range(n_layers):
        p = f"{prefix}.layers.{i}"
        out.update(_attention(f"{p}.self_attention", d))
        out.update(_attention(f"{p}.cross_attention", d))
        out.update(_linear(f"{p}.linear1", d, 4 * d))
        out.update(_linear(f"{p}.linear2", 4 * d, d))
        for k in (1, 2, 3):
            out.update(_norm(f"{p}.norm{k}", d))
    out.update(_norm(f"{prefix}.norm", d))
    return out


def muser_spec(embeddings=EMBEDDINGS, N=8, H=8, encoder_width=128, decoder_width=256,
               num_embeddings=512, embedding_dim=112, dr_width=1024, dr_layers=4, dr_heads=4,
               decoder_layers=4, sub_layers=2, pe_rows=2000, dr=True) -> dict[str, tuple]:
    """Keys and shapes of VQ_VAE(...).state_dict() (MusER_TRANS_CA_GE; dr=False: MEAN_CA_GE)."""
    widths = {name: width for name, _, width in embeddings}
    slice_dim = embedding_dim // 7
    out = {f"{name}.lut.weight": (vocab, width) for name, vocab, width in embeddings}
    out.update(_linear("input_y_linear", sum(widths.values()) - widths["emotion_emb"], encoder_width))
    out["pos_embedd.0.pe"] = (1, pe_rows, encoder_width)
    out.update(encoder_spec("transformer_encoder", N, encoder_width))
    out.update(_linear("latent_linear", encoder_width, embedding_dim))
    out["VQ.embeddings"] = (num_embeddings, embedding_dim)
    out["VQ.ema_dw.hidden"] = (num_embeddings, embedding_dim)
    out["VQ.ema_cluster_size.hidden"] = (num_embeddings,)
    if dr:
        out["VQ_pos_embedd.0.pe"] = (1, pe_rows, dr_width)
        out.update(encoder_spec("DR", dr_layers, dr_width))
    out.update(_linear("input_x_linear_emo", sum(widths.values()), decoder_width))
    out["decoder_pos_embedd.0.pe"] = (1, pe_rows, decoder_width)
    out.update(_linear("decoder_cross_linear", embedding_dim, decoder_width))
    out.update(decoder_spec("transformer_decoder", decoder_layers, decoder_width))
    out.update(_linear("subDecoder_linear", slice_dim, decoder_width))
    for decoder, _, _ in SUBDECODERS:
        out.update(encoder_spec(decoder, sub_layers, decoder_width))
    vocab = {name: v for name, v, _ in embeddings}
    out.update(_linear("predict_type", decoder_width, vocab["type_emb"]))
    out.update(_linear("project_concat_type", decoder_width + widths["type_emb"], decoder_width))
    for head, name in (("predict_tempo", "tempo_emb"), ("predict_chord", "chord_emb"),
                       ("predict_bar_beat", "bar_beat_emb"), ("predict_pitch", "pitch_emb"),
                       ("predict_duration", "duration_emb"), ("predict_velocity", "velocity_emb")):
        out.update(_linear(head, decoder_width, vocab[name]))
    return out


def prior_spec(codebook_n, N=8, encoder_width=256, pe_rows=2000) -> dict[str, tuple]:
    """Keys and shapes of VQ_prior(N, H, codebook_n, encoder_width, ...).state_dict()."""
    out = {"emb.lut.weight": (codebook_n + 5, 256)}
    out.update(_linear("input_linear", 256, encoder_width))
    out["pos_embedd.0.pe"] = (1, pe_rows, encoder_width)
    out.update(encoder_spec("transformer_encoder", N, encoder_width))
    out.update(_linear("predict_fc", encoder_width, codebook_n))
    return out


def their_positions(d, rows):
    """model_utils.PositionalEncoding's buffer, computed as they do (float32)."""
    pe = torch.zeros(rows, d)
    position = torch.arange(0, rows).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d, 2) * -(math.log(10000.0) / d))
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    return pe.unsqueeze(0)


def random_state(spec: dict, seed: int = 0, scale: float = 0.2) -> dict[str, torch.Tensor]:
    """Random tensors of the spec's shapes; positional tables hold their sinusoids; LayerNorm
    gains are near 1 and EMA counts positive."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in spec.items():
        if key.endswith(".pe"):
            state[key] = their_positions(shape[2], shape[1])
        elif key == "VQ.ema_cluster_size.hidden":
            state[key] = torch.rand(shape, generator=g) * 10 + 0.1
        elif ".norm" in key and key.endswith(".weight"):
            state[key] = 1 + torch.randn(shape, generator=g) * scale
        else:
            state[key] = torch.randn(shape, generator=g) * scale
    return state


# ---------------------------------------------------------------------------------------
# Their forward pass (eval mode: dropout off), from the raw tensors.

def _lin(sd, prefix, x):
    return F.linear(x, sd[f"{prefix}.weight"], sd[f"{prefix}.bias"])


def _ln(sd, prefix, x):
    return F.layer_norm(x, x.shape[-1:], sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], 1e-5)


def attention_layer(sd, prefix, queries, keys, heads, causal):
    """AttentionLayer around LinearAttention / CausalLinearAttention (elu+1, eps 1e-6)."""
    n, length, _ = queries.shape
    s = keys.shape[1]
    q = _lin(sd, f"{prefix}.query_projection", queries).view(n, length, heads, -1)
    k = _lin(sd, f"{prefix}.key_projection", keys).view(n, s, heads, -1)
    v = _lin(sd, f"{prefix}.value_projection", keys).view(n, s, heads, -1)
    q, k = F.elu(q) + 1, F.elu(k) + 1
    if causal:
        # Running sums over j <= i, one step at a time (what causal_dot_product computes).
        kv = torch.zeros(n, heads, q.shape[-1], v.shape[-1], dtype=q.dtype)
        ksum = torch.zeros(n, heads, q.shape[-1], dtype=q.dtype)
        steps = []
        for i in range(length):
            kv = kv + torch.einsum("nhd,nhm->nhdm", k[:, i], v[:, i])
            ksum = ksum + k[:, i]
            z = 1 / (torch.einsum("nhd,nhd->nh", q[:, i], ksum) + 1e-6)
            steps.append(torch.einsum("nhd,nhdm->nhm", q[:, i], kv) * z[..., None])
        out = torch.stack(steps, dim=1)
    else:
        kv = torch.einsum("nshd,nshm->nhmd", k, v)
        z = 1 / (torch.einsum("nlhd,nhd->nlh", q, k.sum(dim=1)) + 1e-6)
        out = torch.einsum("nlhd,nhmd,nlh->nlhm", q, kv, z)
    return _lin(sd, f"{prefix}.out_projection", out.reshape(n, length, -1))


def encoder(sd, prefix, x, n_layers, heads, causal):
    for i in range(n_layers):
        p = f"{prefix}.layers.{i}"
        x = _ln(sd, f"{p}.norm1", x + attention_layer(sd, f"{p}.attention", x, x, heads, causal))
        y = _lin(sd, f"{p}.linear2", F.gelu(_lin(sd, f"{p}.linear1", x)))
        x = _ln(sd, f"{p}.norm2", x + y)
    return _ln(sd, f"{prefix}.norm", x)


def decoder(sd, prefix, x, memory, n_layers, heads):
    for i in range(n_layers):
        p = f"{prefix}.layers.{i}"
        x = _ln(sd, f"{p}.norm1", x + attention_layer(sd, f"{p}.self_attention", x, x, heads, True))
        x = _ln(sd, f"{p}.norm2", x + attention_layer(sd, f"{p}.cross_attention", x, memory, heads, False))
        y = _lin(sd, f"{p}.linear2", F.gelu(_lin(sd, f"{p}.linear1", x)))
        x = _ln(sd, f"{p}.norm3", x + y)
    return _ln(sd, f"{prefix}.norm", x)


def _embed(sd, words, names):
    out = []
    for name in names:
        table = sd[f"{name}.lut.weight"]
        out.append(F.embedding(words[..., WORD_COLUMN[name]], table) * math.sqrt(table.shape[1]))
    return torch.cat(out, dim=-1)


def muser_forward(sd, x, y, N, H, dr_layers, dr_heads, decoder_layers, sub_layers):
    """VQ_VAE.forward in eval mode: latent before quantisation, codes, DR outputs [7][B, T],
    and log-probabilities of the seven elements {their embedding name: [B, T, V]}."""
    names = [name for name, _, _ in EMBEDDINGS]
    length = x.shape[1]
    h = _lin(sd, "input_y_linear", _embed(sd, y, names[:-1]))
    h = h + sd["pos_embedd.0.pe"][:, :length]
    latent = _lin(sd, "latent_linear", encoder(sd, "transformer_encoder", h, N, H, causal=False))
    codebook = sd["VQ.embeddings"]
    flat = latent.reshape(-1, latent.shape[-1])
    distances = (flat ** 2).sum(1, keepdim=True) + (codebook ** 2).sum(1) - 2 * flat @ codebook.t()
    codes = distances.argmin(1).view(latent.shape[:-1])
    quantized = codebook[codes]
    s = quantized.shape[-1] // 7
    reduced = None
    if "DR.norm.weight" in sd:
        reduced = []
        for i in range(7):
            t = quantized[:, :, s * i:s * (i + 1)].transpose(1, 2) + sd["VQ_pos_embedd.0.pe"][:, :s]
            reduced.append(encoder(sd, "DR", t, dr_layers, dr_heads, causal=False)[:, 0, :])
    pe = sd["decoder_pos_embedd.0.pe"][:, :length]
    out = _lin(sd, "input_x_linear_emo", _embed(sd, x, names)) + pe
    memory = _lin(sd, "decoder_cross_linear", quantized)
    out = decoder(sd, "transformer_decoder", out, memory, decoder_layers, H)
    type_emb = _embed(sd, y, ["type_emb"])
    log_probs = {}
    for name, head, k in SUBDECODERS:
        e = out + _lin(sd, "subDecoder_linear", quantized[:, :, s * k:s * (k + 1)]) + pe
        e = encoder(sd, name, e, sub_layers, H, causal=True)
        if head != "predict_type":
            e = _lin(sd, "project_concat_type", torch.cat([e, type_emb], dim=-1))
        log_probs[head] = F.log_softmax(_lin(sd, head, e), dim=-1)
    return latent, codes, reduced, log_probs


def prior_forward(sd, tokens, N, H, temperature):
    """VQ_prior.forward(input, temperature)."""
    table = sd["emb.lut.weight"]
    h = _lin(sd, "input_linear", F.embedding(tokens, table) * math.sqrt(table.shape[1]))
    h = h + sd["pos_embedd.0.pe"][:, :tokens.shape[1]]
    h = encoder(sd, "transformer_encoder", h, N, H, causal=True)
    return F.log_softmax(_lin(sd, "predict_fc", h) / temperature, dim=-1)
