"""What the benchmarks share: the EMOPIA release's vocabulary, for paper-scale models."""
from music.elements import EVENT_TYPES, per_field

# Field vocabulary sizes of EMOPIA's compound-word release and its type indices.
EMOPIA_VOCAB = per_field({"tempo": 56, "chord": 135, "bar-beat": 18, "type": 4, "pitch": 87,
                          "duration": 18, "velocity": 42, "emotion": 5})
TYPE_IDS = {name: k for k, name in enumerate(EVENT_TYPES)}
