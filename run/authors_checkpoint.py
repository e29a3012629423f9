"""Reading the checkpoints the MusER authors released, into this project's models.

Their files are `torch.save({'model': state_dict, 'optimizer': ..., 'epoch': ...})` of the
classes in their models/MusER_TRANS_CA_GE.py (VQ_VAE) and models/Prior.py (VQ_prior),
whose transformers come from fast-transformers' builders. The computation is the same as
ours (post-norm layers, elu+1 linear attention with eps 1e-6, GELU, final LayerNorm); only
the names differ, and two things more:
- their embeddings are concatenated type first (type, tempo, chord, bar-beat, pitch,
  duration, velocity, emotion), ours in FIELDS order, so the input linears' weight
  columns are reordered;
- their sinusoidal positional tables are saved (2000 rows), ours are recomputed: theirs are
  checked against ours and dropped. Their EMA step counter is not saved at all; a trained
  model is long past the bias correction, so the counter is set to EMA_STEPS.

`muser_key_map` / `prior_key_map` say where each of their tensors goes; `convert_state`
checks a state dict against a map (missing, unexpected and misshapen tensors are one-line
UserErrors) and returns ours, loaded once into the model so that every entry is filled.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from models.config import MusERConfig, PriorConfig, apply_preset
from models.muser import MusER
from models.prior import Prior
from music.elements import FIELDS
from music.errors import UserError

# Their names, in our FIELDS order (tempo, chord, bar-beat, type, pitch, duration, velocity, emotion).
EMBEDDINGS = ("tempo_emb", "chord_emb", "bar_beat_emb", "type_emb", "pitch_emb", "duration_emb",
              "velocity_emb", "emotion_emb")
ELEMENT_DECODERS = ("tempo_decoder", "chord_decoder", "beat_decoder", "type_decoder", "pitch_decoder",
                    "duration_decoder", "velocity_decoder")
HEADS = ("predict_tempo", "predict_chord", "predict_bar_beat", "predict_type", "predict_pitch",
         "predict_duration", "predict_velocity")
# Their input2emb order, as indices into FIELDS.
EMBEDDING_ORDER = (3, 0, 1, 2, 4, 5, 6, 7)

# The authors' model files this converter reads, and the config switches each one means.
VARIANTS = {"MusER_TRANS_CA_GE": {"reduction": "TRANS"},
            "MusER_MEAN_CA_GE": {"reduction": "MEAN"}}

# EMA step counter given to a converted quantiser: 0.99 ** 10000 ~ 2e-44, so the bias
# correction is exactly 1, as it was at the end of their training.
EMA_STEPS = 10_000
# Their positional tables are computed in float32, ours in float64 (then rounded): they
# differ by up to 7e-5 at position 1024.
POSITION_TOLERANCE = 1e-4

COPY, FIELD_COLUMNS, POSITIONS = "copy", "field columns", "positions"


@dataclasses.dataclass(frozen=True)
class Target:
    """Where one of their tensors goes: our state_dict key (or, for POSITIONS, the buffer it
    must match) and how it is transformed."""
    key: str
    how: str = COPY
    fields: int = 0         # FIELD_COLUMNS: how many embeddings the linear reads (7 or 8)


# ---------------------------------------------------------------------------------------
# Name maps, built from our model's structure (layer counts come from the model itself).

def _linear(theirs: str, ours: str, fields: int = 0) -> dict:
    """A Linear or LayerNorm; with `fields`, a linear reading that many concatenated embeddings."""
    weight = Target(f"{ours}.weight", FIELD_COLUMNS, fields) if fields else Target(f"{ours}.weight")
    return {f"{theirs}.weight": weight, f"{theirs}.bias": Target(f"{ours}.bias")}


def _attention(theirs: str, ours: str) -> dict:
    out = {}
    for name in ("query_projection", "key_projection", "value_projection", "out_projection"):
        out.update(_linear(f"{theirs}.{name}", f"{ours}.{name}"))
    return out


def _stack(theirs: str, ours: str, stack) -> dict:
    """fast-transformers' TransformerEncoder / TransformerDecoder -> our TransformerStack.

    Their encoder layer: attention, norm1 (after attention), linear1, linear2, norm2; their
    decoder layer: self_attention, norm1, cross_attention, norm2, linear1, linear2, norm3.
    """
    out = {}
    for i, layer in enumerate(stack.layers):
        t, o = f"{theirs}.layers.{i}", f"{ours}.layers.{i}"
        cross = layer.cross_attention is not None
        out.update(_attention(f"{t}.self_attention" if cross else f"{t}.attention", f"{o}.attention"))
        out.update(_linear(f"{t}.norm1", f"{o}.norm_attention"))
        if cross:
            out.update(_attention(f"{t}.cross_attention", f"{o}.cross_attention"))
            out.update(_linear(f"{t}.norm2", f"{o}.norm_cross"))
        out.update(_linear(f"{t}.linear1", f"{o}.linear1"))
        out.update(_linear(f"{t}.linear2", f"{o}.linear2"))
        out.update(_linear(f"{t}.norm3" if cross else f"{t}.norm2", f"{o}.norm_ff"))
    out.update(_linear(f"{theirs}.norm", f"{ours}.norm"))
    return out


def muser_key_map(model) -> dict[str, Target]:
    """Their VQ_VAE state_dict keys -> our MusER. Supports the CA conditioning with GE decoding
    (MusER_TRANS_CA_GE, and MusER_MEAN_CA_GE, which lacks the DR module)."""
    c = model.config
    if c.conditioning != "CA" or c.decoding != "GE":
        raise ValueError(f"the authors' checkpoints are read for the CA/GE variants only, not {c.name}")
    out = {f"{name}.lut.weight": Target(f"embeddings.tables.{k}.weight") for k, name in enumerate(EMBEDDINGS)}
    out.update(_linear("input_y_linear", "encoder_input", len(FIELDS) - 1))
    out["pos_embedd.0.pe"] = Target("encoder_position.pe", POSITIONS)
    out.update(_stack("transformer_encoder", "encoder", model.encoder))
    out.update(_linear("latent_linear", "to_latent"))
    out["VQ.embeddings"] = Target("quantizer.codebook")
    out["VQ.ema_dw.hidden"] = Target("quantizer.ema_sum_hidden")
    out["VQ.ema_cluster_size.hidden"] = Target("quantizer.ema_count_hidden")
    if model.dr is not None:
        out["VQ_pos_embedd.0.pe"] = Target("dr_position.pe", POSITIONS)
        out.update(_stack("DR", "dr", model.dr))
    out.update(_linear("input_x_linear_emo", "decoder_input", len(FIELDS)))
    out["decoder_pos_embedd.0.pe"] = Target("decoder_position.pe", POSITIONS)
    out.update(_linear("decoder_cross_linear", "memory_projection"))
    out.update(_stack("transformer_decoder", "global_decoder", model.global_decoder))
    out.update(_linear("subDecoder_linear", "slice_projection"))
    for k, name in enumerate(ELEMENT_DECODERS):
        out.update(_stack(name, f"element_decoders.{k}", model.element_decoders[k]))
    for k, name in enumerate(HEADS):
        out.update(_linear(name, f"heads.{k}"))
    out.update(_linear("project_concat_type", "type_projection"))
    return out


def prior_key_map(model) -> dict[str, Target]:
    """Their VQ_prior state_dict keys -> our Prior."""
    out = {"emb.lut.weight": Target("embedding.weight")}
    out.update(_linear("input_linear", "input_projection"))
    out["pos_embedd.0.pe"] = Target("position.pe", POSITIONS)
    out.update(_stack("transformer_encoder", "transformer", model.transformer))
    out.update(_linear("predict_fc", "head"))
    return out


# ---------------------------------------------------------------------------------------
# Conversion

def field_columns(emb_sizes, n_fields: int) -> torch.Tensor:
    """Column indices that take a linear's input from their embedding order to FIELDS order,
    for the first n_fields fields (7 for the encoder input, 8 for the decoder's)."""
    fields = [f for f in EMBEDDING_ORDER if f < n_fields]
    start, offset = 0, {}
    for f in fields:
        offset[f] = start
        start += emb_sizes[f]
    return torch.cat([torch.arange(offset[f], offset[f] + emb_sizes[f]) for f in range(n_fields)])


def _names(keys, limit: int = 4) -> str:
    keys = sorted(keys)
    more = f" (and {len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _shape(t) -> str:
    return "[" + ", ".join(map(str, t.shape)) + "]"


def convert_state(state: dict, model: torch.nn.Module, key_map: dict[str, Target], source,
                  what: str) -> dict[str, torch.Tensor]:
    """Their state dict -> ours for `model`, which is loaded with it (strictly) on the way.

    Raises UserError (one line, naming `source`) on missing, unexpected or misshapen
    tensors, or positional tables that are not the sinusoids ours compute.
    """
    missing, unexpected = set(key_map) - set(state), set(state) - set(key_map)
    if missing or unexpected:
        parts = ([f"missing {_names(missing)}"] if missing else []) + \
                ([f"unexpected {_names(unexpected)}"] if unexpected else [])
        raise UserError(f"{source}: not the authors' {what} checkpoint (another variant or kind?): "
                        f"{'; '.join(parts)}")
    ours = model.state_dict()
    out = {}
    for key, target in key_map.items():
        tensor = state[key].detach().cpu()
        if target.how == POSITIONS:
            _check_positions(tensor, model.get_buffer(target.key), key, source)
            continue
        expected = ours[target.key]
        if tensor.shape != expected.shape:
            raise UserError(f"{source}: {key} is {_shape(tensor)}, the model needs {_shape(expected)} "
                            f"(another dictionary, VQ_dict or variant?)")
        if target.how == FIELD_COLUMNS:
            tensor = tensor[:, field_columns(model.config.emb_sizes, target.fields)]
        out[target.key] = tensor.to(expected.dtype).clone()
    if "quantizer.ema_steps" in ours:
        out["quantizer.ema_steps"] = torch.tensor(EMA_STEPS, dtype=ours["quantizer.ema_steps"].dtype)
    model.load_state_dict(out, strict=True)
    return out


def _check_positions(theirs: torch.Tensor, ours: torch.Tensor, key: str, source) -> None:
    """Their saved table [1, rows, width] must hold our sinusoids in the rows we use."""
    rows, width = ours.shape
    if theirs.dim() != 3 or theirs.shape[0] != 1 or theirs.shape[2] != width or theirs.shape[1] < rows:
        raise UserError(f"{source}: {key} is {_shape(theirs)}, expected [1, >={rows}, {width}]")
    error = (theirs[0, :rows].float() - ours.float()).abs().max().item()
    if not error <= POSITION_TOLERANCE:
        raise UserError(f"{source}: {key} is not the sinusoidal positional encoding "
                        f"(differs by {error:.3g}); not a checkpoint of the authors' code?")


# ---------------------------------------------------------------------------------------
# Files and configs

def load_authors_checkpoint(path) -> tuple[dict[str, torch.Tensor], int | None]:
    """(state_dict, epoch) of one of their files: {'model': ..., 'epoch': ...} or a bare state_dict."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged or foreign files
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not a readable PyTorch checkpoint: {detail[:200]}") from None
    if isinstance(obj, dict) and "kind" in obj and "config" in obj:
        raise UserError(f"{path}: already a checkpoint of this project; nothing to convert")
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not state or \
            not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise UserError(f"{path}: expected the authors' {{'model': state_dict, 'optimizer': ..., "
                        f"'epoch': ...}} file")
    epoch = obj.get("epoch") if isinstance(obj, dict) else None
    return state, (int(epoch) if isinstance(epoch, int) else None)


def muser_config(variant: str, vocab_sizes, type_ids, preset: str = "paper") -> MusERConfig:
    """The config of an authors' variant (the paper's sizes, or a preset's), with the
    dictionary's vocabularies."""
    if variant not in VARIANTS:
        raise UserError(f"--variant {variant}: choose from {', '.join(VARIANTS)}")
    config = MusERConfig(vocab_sizes=list(vocab_sizes), type_ids=dict(type_ids))
    return dataclasses.replace(apply_preset(config, preset), **VARIANTS[variant])


def convert_muser(state: dict, config: MusERConfig, source):
    """Our MusER (eval mode) holding their VQ_VAE weights, and its state_dict."""
    model = MusER(config)
    converted = convert_state(state, model, muser_key_map(model), source, config.name)
    return model.eval(), converted


def convert_prior(state: dict, config: PriorConfig, source):
    """Our Prior (eval mode) holding their VQ_prior weights, and its state_dict."""
    model = Prior(config)
    converted = convert_state(state, model, prior_key_map(model), source, "VQ_prior")
    return model.eval(), converted
