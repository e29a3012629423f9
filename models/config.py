"""Hyperparameters of the MusER VQ-VAE and of its emotion-conditioned prior.

Defaults are the paper's values. A config is a plain dataclass that
round-trips through `to_dict` / `from_dict`, so checkpoints can rebuild the model without
repeating hyperparameters by hand.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from models.attention import DECODER_KINDS, ENCODER_KINDS
from music.elements import EVENT_TYPES, FIELDS, N_ELEMENTS, per_field

# Embedding width of each field (the paper's), and the latent: one 16-dim slice per element.
EMB_SIZES = per_field({"tempo": 128, "chord": 256, "bar-beat": 64, "type": 32, "pitch": 512,
                       "duration": 128, "velocity": 128, "emotion": 128})
SLICE_DIM = 16

REDUCTIONS = ("TRANS", "MEAN")
CONDITIONINGS = ("CA", "CONCAT", "NONE")
DECODINGS = ("GE", "G", "E")
REG_TARGETS = ("index", "value")
QUANTIZERS = ("joint", "product")
# Global decoder depth when dec_layers is left unset: the authors' MusER_TRANS_CA_G (global
# decoding only) has 8 layers, the encoder's count; their two-level models have 4.
GLOBAL_DECODER_LAYERS = {"GE": 4, "G": 8, "E": 0}


class _ConfigDict:
    """to_dict / from_dict shared by both configs."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown keys {unknown}")
        return cls(**d)


# The codes per slice of the first product models, whose names carry no size (..._PQ): a bare
# _PQ keeps meaning 64 codes per slice whatever the default is.
UNSIZED_PQ_CODES = 64


def model_name(reduction: str, conditioning: str, decoding: str, regularised: bool = True,
               quantizer: str = "joint", slice_codebook_size: int | None = None) -> str:
    """MusER_TRANS_CA_GE; VQVAE_* without L_reg; with one codebook per slice, _PQ128 at the end
    for 128 codes each (_PQ alone for UNSIZED_PQ_CODES)."""
    suffix = ""
    if quantizer == "product":
        size = slice_codebook_size or MusERConfig.slice_codebook_size
        suffix = "_PQ" if size == UNSIZED_PQ_CODES else f"_PQ{size}"
    return f"{'MusER' if regularised else 'VQVAE'}_{reduction}_{conditioning}_{decoding}{suffix}"


@dataclass
class MusERConfig(_ConfigDict):
    vocab_sizes: list[int]                # 8 ints in FIELDS order, from the dictionary
    emb_sizes: list[int] = field(default_factory=lambda: list(EMB_SIZES))
    max_len: int = 1024                   # sequence length; also the DR module's width
    enc_d_model: int = 128
    enc_layers: int = 8
    enc_heads: int = 8
    latent_dim: int = N_ELEMENTS * SLICE_DIM
    slice_dim: int = SLICE_DIM
    codebook_size: int = 512
    commitment: float = 0.25
    ema_decay: float = 0.99
    ema_eps: float = 1e-5
    # Beyond the paper (0 = off): in training, a code whose moving-average count falls
    # below this is re-seeded with a random encoder output (a remedy for codebook collapse).
    dead_code_threshold: float = 0.0
    # Beyond the paper: "product" quantises each element slice with a codebook of its own,
    # slice_codebook_size codes each (models.quantizer.ProductQuantizer); "joint" is the
    # paper's one codebook of codebook_size codes over the whole latent. 128 codes per slice:
    # chosen among 32, 64 and 128 by the rule in evaluation/verdicts.py (README).
    quantizer: str = "joint"
    slice_codebook_size: int = 128
    dr_layers: int = 4
    dr_heads: int = 4
    dec_d_model: int = 256
    # None = the variant's own depth (GLOBAL_DECODER_LAYERS); a number, from a flag or a
    # preset, wins. Kept as None in the dict so a variant switch re-resolves it.
    dec_layers: int | None = field(default=None, metadata={
        "flag_type": int, "flag_default": "4; 8 with --decoding G, as the authors' MusER_TRANS_CA_G"})
    dec_heads: int = 8
    sub_layers: int = 2
    sub_heads: int = 8
    dropout: float = 0.1
    reduction: str = "TRANS"              # "TRANS" (DR transformer) or "MEAN"
    conditioning: str = "CA"              # "CA", "CONCAT" or "NONE"
    decoding: str = "GE"                  # "GE", "G" or "E"
    reg_weight: float = 0.1               # 0 -> plain VQ-VAE baseline
    reg_target: str = "index"             # "index" (paper) or "value" (musical values)
    attention: str = "linear"             # encoder, DR and cross attention
    decoder_attention: str = "causal-linear"  # self-attention of decoders
    chunk_size: int = 64                  # block length of the parallel causal-linear form
    type_ids: dict | None = None          # {'EOS','Emotion','Metrical','Note'} -> type index
    value_tables: list[list[float]] | None = None  # per element: index -> musical value

    def __post_init__(self):
        self.vocab_sizes = [int(v) for v in self.vocab_sizes]
        self.emb_sizes = [int(v) for v in self.emb_sizes]
        if len(self.vocab_sizes) != len(FIELDS):
            raise ValueError(f"vocab_sizes needs {len(FIELDS)} entries, got {len(self.vocab_sizes)}")
        if len(self.emb_sizes) != len(FIELDS):
            raise ValueError(f"emb_sizes needs {len(FIELDS)} entries, got {len(self.emb_sizes)}")
        if self.latent_dim != N_ELEMENTS * self.slice_dim:
            raise ValueError(f"latent_dim ({self.latent_dim}) must be {N_ELEMENTS} x slice_dim ({self.slice_dim})")
        for name, value, allowed in (("reduction", self.reduction, REDUCTIONS),
                                     ("conditioning", self.conditioning, CONDITIONINGS),
                                     ("decoding", self.decoding, DECODINGS),
                                     ("reg_target", self.reg_target, REG_TARGETS),
                                     ("quantizer", self.quantizer, QUANTIZERS),
                                     ("attention", self.attention, ENCODER_KINDS),
                                     ("decoder_attention", self.decoder_attention,
                                      DECODER_KINDS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        # Without a global decoder the element decoders must do all the decoding, and
        # element decoders need something to read: NONE goes with E and only with E.
        if (self.conditioning == "NONE") != (self.decoding == "E"):
            raise ValueError(f"conditioning NONE requires decoding E and vice versa "
                             f"(got {self.conditioning}/{self.decoding})")
        for name, width, heads in (("enc", self.enc_d_model, self.enc_heads),
                                   ("dec", self.dec_d_model, self.dec_heads),
                                   ("sub", self.dec_d_model, self.sub_heads),
                                   ("dr", self.max_len, self.dr_heads)):
            if width % heads:
                raise ValueError(f"{name}: width {width} is not divisible by {heads} heads")
        if self.dec_layers is not None and self.dec_layers < 1:
            raise ValueError(f"dec_layers must be at least 1, got {self.dec_layers}")
        if self.dead_code_threshold < 0:
            raise ValueError(f"dead_code_threshold must be >= 0, got {self.dead_code_threshold}")
        if self.type_ids is not None:
            missing = [n for n in EVENT_TYPES if n not in self.type_ids]
            if missing:
                raise ValueError(f"type_ids lacks {missing}")
            self.type_ids = {k: int(v) for k, v in self.type_ids.items()}
        if self.value_tables is not None:
            if len(self.value_tables) != N_ELEMENTS:
                raise ValueError(f"value_tables needs one table per element ({N_ELEMENTS})")
            for k, table in enumerate(self.value_tables):
                if len(table) != self.vocab_sizes[k]:
                    raise ValueError(f"value_tables[{k}] has {len(table)} entries, "
                                     f"vocabulary has {self.vocab_sizes[k]}")

    @property
    def name(self) -> str:
        """Model name in the authors' style, e.g. MusER_TRANS_CA_GE; VQVAE_* without L_reg;
        with one codebook per slice, _PQ128 at the end for 128 codes each (model_name)."""
        return model_name(self.reduction, self.conditioning, self.decoding, self.reg_weight > 0, self.quantizer,
                          self.slice_codebook_size)

    @property
    def code_slots(self) -> int:
        """Codes in all: the codebook, or every slice's codebook."""
        return self.codebook_size if self.quantizer == "joint" else N_ELEMENTS * self.slice_codebook_size

    @property
    def global_layers(self) -> int:
        """Layers of the global decoder: dec_layers when set, else the variant's default."""
        return self.dec_layers if self.dec_layers is not None else GLOBAL_DECODER_LAYERS[self.decoding]


@dataclass
class PriorConfig(_ConfigDict):
    n_codes: int                          # number of used codes (compact vocabulary)
    d_model: int = 256
    layers: int = 8
    heads: int = 8
    emb_size: int = 256
    dropout: float = 0.1
    temperature: float = 0.3              # logits are divided by it in training too
    max_len: int = 1025                   # emotion token + 1024 codes
    decoder_attention: str = "causal-linear"
    chunk_size: int = 64
    # Beyond the paper (0 = off): in training, each piece's emotion token is replaced by
    # the "no emotion" token with this probability per step, so that generation can
    # combine conditional and unconditional predictions (classifier-free guidance).
    emotion_dropout: float = field(default=0.0, metadata={
        "help": "beyond the paper: probability per piece and training step of replacing its "
                "emotion token by a learned 'no emotion' token, for generate.py --guidance"})
    # One more input token, "no emotion" (n_codes + 5); set by emotion_dropout > 0. False in
    # every checkpoint from before it, which keep their n_codes + 5 embedding rows.
    null_emotion: bool = field(default=False, metadata={"flag": False})
    # Beyond the paper: a prior over the codes of a product VQ-VAE (one codebook per slice)
    # predicts one code stream per slice; stream_codes[k] is slice k's number of used codes,
    # and n_codes their sum. None: the paper's prior over one joint codebook.
    stream_codes: list[int] | None = field(default=None, metadata={"flag": False})

    def __post_init__(self):
        if self.stream_codes is not None:
            self.stream_codes = [int(n) for n in self.stream_codes]
            if not self.stream_codes or min(self.stream_codes) < 1 or sum(self.stream_codes) != self.n_codes:
                raise ValueError(f"stream_codes must be positive counts summing to n_codes ({self.n_codes}), "
                                 f"got {self.stream_codes}")
        if not 0 <= self.emotion_dropout <= 1:
            raise ValueError(f"emotion_dropout must be in [0, 1], got {self.emotion_dropout}")
        if self.emotion_dropout > 0:
            self.null_emotion = True
        if self.n_codes < 1:
            raise ValueError(f"n_codes must be positive, got {self.n_codes}")
        if self.d_model % self.heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by {self.heads} heads")
        if self.decoder_attention not in DECODER_KINDS:
            raise ValueError(f"decoder_attention must be one of {DECODER_KINDS}")

    @property
    def quantizer(self) -> str:
        """The VQ-VAE whose codes this prior models: "joint" or "product" (one stream per slice)."""
        return "joint" if self.stream_codes is None else "product"

    @property
    def streams(self) -> int:
        """Code streams the prior reads and predicts: one per slice of a product VQ-VAE, else 1."""
        return len(self.stream_codes) if self.stream_codes is not None else 1

    @property
    def stream_vocab_sizes(self) -> list[int]:
        """Input vocabulary of each code stream (one for the joint prior): its codes, then 5
        emotion tokens (codes + quadrant), then the "no emotion" token when null_emotion."""
        return [n + 5 + int(self.null_emotion) for n in (self.stream_codes or [self.n_codes])]

    @property
    def vocab_size(self) -> int:
        """Input vocabulary: the codes, then 5 emotion tokens (n_codes + quadrant), then
        the "no emotion" token when null_emotion; every stream's, one after another, for a
        product prior."""
        return sum(self.stream_vocab_sizes)

    @property
    def null_token(self) -> int | None:
        """Input token of "no emotion", or None for a prior without it (the joint prior's; a
        product prior has one per stream, after each stream's emotion tokens)."""
        return self.n_codes + 5 if self.null_emotion else None

    @property
    def supports_guidance(self) -> bool:
        """Trained with emotion dropout, so its "no emotion" token means something."""
        return self.null_emotion and self.emotion_dropout > 0


# Overrides per preset, keyed by the config they apply to. `tiny` shrinks everything so a
# whole pipeline runs on a laptop CPU in seconds (the DR width follows max_len).
PRESETS: dict[str, dict[str, dict]] = {
    "paper": {"muser": {}, "prior": {}},
    "tiny": {
        "muser": dict(emb_sizes=per_field({"tempo": 8, "chord": 16, "bar-beat": 8, "type": 8, "pitch": 16,
                                          "duration": 8, "velocity": 8, "emotion": 8}), max_len=64, enc_d_model=32,
                      enc_layers=2, enc_heads=2, latent_dim=N_ELEMENTS * 4, slice_dim=4, codebook_size=32,
                      dr_layers=1, dr_heads=2, dec_d_model=32, dec_layers=1, dec_heads=2,
                      sub_layers=1, sub_heads=2, chunk_size=16),
        "prior": dict(d_model=32, layers=2, heads=2, emb_size=32, max_len=65, chunk_size=16),
    },
    # `small` keeps what the method is about (seven 16-dim slices of a 112-dim latent, a
    # 512-code codebook, the DR module, two-level decoding) and shrinks the rest, so that
    # the reproduction study on all of EMOPIA runs on a 2-core CPU in about an hour:
    # 256-step windows (the DR width follows), half-width embeddings and layers.
    "small": {
        "muser": dict(emb_sizes=[width // 2 for width in EMB_SIZES], max_len=256, enc_d_model=64,
                      enc_layers=2, enc_heads=4, dr_layers=1, dr_heads=4, dec_d_model=128,
                      dec_layers=2, dec_heads=4, sub_layers=1, sub_heads=4),
        "prior": dict(d_model=128, layers=4, heads=4, emb_size=128, max_len=257),
    },
}


def apply_preset(config, preset: str):
    """Return a copy of `config` (MusERConfig or PriorConfig) with the preset's overrides."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    if isinstance(config, MusERConfig):
        overrides = PRESETS[preset]["muser"]
    elif isinstance(config, PriorConfig):
        overrides = PRESETS[preset]["prior"]
    else:
        raise TypeError(f"apply_preset expects MusERConfig or PriorConfig, got {type(config)}")
    return dataclasses.replace(config, **overrides)
