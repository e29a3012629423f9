"""What the benchmarks share: the EMOPIA release's vocabulary, for paper-scale models."""

# Field vocabulary sizes of EMOPIA's compound-word release (tempo, chord, bar-beat, type,
# pitch, duration, velocity, emotion) and its type indices.
EMOPIA_VOCAB = [56, 135, 18, 4, 87, 18, 42, 5]
TYPE_IDS = {"EOS": 0, "Emotion": 1, "Metrical": 2, "Note": 3}
