"""The musical elements: the one list of the columns of a compound word, and all that
follows from it. Every other module addresses an element by its name through these.

A compound word has one column per field, in FIELDS order: the seven musical elements,
then the emotion tag. MusER's latent has one slice per element in the same order (slice
k = dims [k * slice_dim, (k + 1) * slice_dim)). To add an element, add its name here (and
its values to the CP encoder in music/cp.py); the counts, columns, slices and per-element
tables of the other modules follow from this list or are keyed by its names.
"""
from __future__ import annotations

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
    if set(values) != set(names):
        raise ValueError(f"expected one value per field of {', '.join(names)}, got {', '.join(values)}")
    return [values[name] for name in names]
