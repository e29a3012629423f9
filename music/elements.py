"""The musical elements: the one list of the columns of a compound word, and all that
follows from it. Every other module addresses an element by its name through these.

A compound word has one column per field, in FIELDS order: the seven musical elements,
then the emotion tag. MusER's latent has one slice per element in the same order (slice
k = dims [k * slice_dim, (k + 1) * slice_dim)). To add an element, add its name here (and
its values to the CP encoder in music/cp.py); the counts, columns, slices and per-element
tables of the other modules follow from this list or are keyed by its names.
"""
from __future__ import annotations

import re
from pathlib import PurePath

ELEMENTS = ("tempo", "chord", "bar-beat", "type", "pitch", "duration", "velocity")
EMOTION = "emotion"
FIELDS = ELEMENTS + (EMOTION,)

N_ELEMENTS = len(ELEMENTS)
N_FIELDS = len(FIELDS)
COLUMN = {name: k for k, name in enumerate(FIELDS)}      # COLUMN["pitch"] -> 4
TYPE_FIELD = COLUMN["type"]
EMOTION_FIELD = COLUMN[EMOTION]
# Values of the emotion field: 0 unlabeled, 1..4 the quadrants Q1..Q4 of Russell's plane.
QUADRANTS = (1, 2, 3, 4)
QUADRANT_NAMES = tuple(f"Q{q}" for q in QUADRANTS)
HIGH_AROUSAL = (1, 2)         # the quadrants of Russell's plane above the valence axis
POSITIVE_VALENCE = (1, 4)     # ... and right of the arousal axis
# Q1-Q2 and Q3-Q4 differ in valence, Q1-Q4 and Q2-Q3 in arousal, Q1-Q3 and Q2-Q4 in both.
QUADRANT_PAIRS = ((1, 2), (1, 4), (1, 3), (3, 4), (2, 3), (2, 4))
# Values of the type field (the dictionary must hold all four).
EVENT_TYPES = ("EOS", "Emotion", "Metrical", "Note")

# Elements whose head is conditioned on the next word's type (all but the type itself).
CONDITIONED = tuple(k for k in range(N_ELEMENTS) if k != TYPE_FIELD)
# Elements whose tokens carry a number that orders them musically ('Note_Pitch_60'):
# every element but the chord and the type, which have no musical order.
NUMERIC_ELEMENTS = tuple(e for e in ELEMENTS if e not in ("chord", "type"))
# Python identifiers of the elements (attribute and flag names): "bar-beat" -> "bar_beat".
IDENTIFIERS = tuple(name.replace("-", "_") for name in ELEMENTS)
# Other spellings users type for an element.
ALIASES = {**{i: e for i, e in zip(IDENTIFIERS, ELEMENTS) if i != e},
           "barbeat": "bar-beat", "beat": "bar-beat"}


def element_index(name: str) -> int:
    """Position of an element in a word and in the latent ('bar_beat' and 'beat' mean 'bar-beat')."""
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key not in ELEMENTS:
        raise ValueError(f"unknown element {name!r}; choose from {', '.join(ELEMENTS)}")
    return ELEMENTS.index(key)


def element_slice(name: str, slice_dim: int) -> slice:
    """The latent dimensions of one element."""
    k = element_index(name)
    return slice(k * slice_dim, (k + 1) * slice_dim)


def per_field(values: dict, names=FIELDS) -> list:
    """A {field name: value} table as a list in column order; every name exactly once."""
    return list(per_element(values, names).values())


def per_element(table: dict, names=ELEMENTS) -> dict:
    """A {element name: value} table checked to hold every name of `names` exactly once, in
    that order: a table that misses a newly added element fails where it is defined."""
    if set(table) != set(names) or len(table) != len(names):
        raise ValueError(f"expected one value per element of {', '.join(names)}, got {', '.join(map(str, table))}")
    return {name: table[name] for name in names}


# ---------------------------------------------------------------------------------------
# Names and tokens
# ---------------------------------------------------------------------------------------
# A file name that starts with its quadrant: EMOPIA's `Q3_<song>_<clip>.mid`, or the
# `emotion3_<i>.mid` that generate.py writes.
_QUADRANT_IN_NAME = re.compile(r"^(?:Q|emotion)([1-4])_", re.IGNORECASE)
_QUADRANT_TEXT = re.compile(r"^Q?([1-4])$", re.IGNORECASE)
_EMOPIA_SONG = re.compile(r"^(?:Q[1-4]_)?(.*?)(?:_\d+)?(?:\.midi?)?$", re.IGNORECASE)
_TOKEN_NUMBER = re.compile(r"^(.*_)(-?\d+)$")


def quadrant_of_name(name) -> int | None:
    """`Q3_xyz_1.mid` or `emotion3_7.mid` (any folder) -> 3; None when the name carries none."""
    match = _QUADRANT_IN_NAME.match(PurePath(str(name)).name)
    return int(match.group(1)) if match else None


def parse_quadrant(text) -> int | None:
    """A quadrant as users write it: 'Q3', 'q3' or '3' -> 3; None for anything else."""
    match = _QUADRANT_TEXT.match(str(text).strip())
    return int(match.group(1)) if match else None


def song_of_name(name) -> str:
    """EMOPIA clip `Q1_0vLPYiPN7qY_2.mid` -> its song `0vLPYiPN7qY` (clips of one song share it)."""
    return _EMOPIA_SONG.match(PurePath(str(name)).name).group(1)


def token_number(token, prefix: str | None = None) -> int | None:
    """The number a token ends with: 'Note_Pitch_60' -> 60, 'Tempo_84' -> 84, 'Beat_3' -> 3.

    None for a token without one (the integer 0 of an unused field, 'CONTI', 'Bar', chord
    names) and, when `prefix` is given ('Note_Pitch_'), for a token of another kind.
    """
    if not isinstance(token, str):
        return None
    match = _TOKEN_NUMBER.match(token)
    if match is None or (prefix is not None and match.group(1) != prefix):
        return None
    return int(match.group(2))
