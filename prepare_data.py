"""Step 0: encode a folder of MIDI files as an EMOPIA-format compound-word dataset.

    python prepare_data.py --midi_dir EMOPIA_1.0/midis --out_dir data/co-representation --name emopia

With `--sync beats` (the default) every clip is first rewritten on its own beat grid, as
EMOPIA's release was (music/sync.py): beats and downbeats come from the shipped table of
EMOPIA's clips (data/emopia_beats.npz), then from the cache folder `--beat_cache`, and only
then from madmom's tracker on the clip's synthesised audio (worker processes; each result
is cached as it arrives, so an interrupted run resumes). `--sync none` encodes the MIDI as
given, exactly as the EMOPIA pipeline does on unsynchronised clips.

`--midi_dir` has no default: the 32-clip sample in data/sample/midis must never end up,
unnoticed, where MusER.py looks for the full corpus.

Writes, each atomically:
  {out_dir}/{name}_data.npz   x, y [N, 1024, 8] int64; mask [N, 1024] float64; seq_len,
                              num_groups [N] int64; names [N] str (file names)
  {out_dir}/dictionary.pkl    (event2word, word2event): built from the corpus, or the one given
  {out_dir}/{name}_idx.npz    cls_1_idx .. cls_4_idx: the rows of each emotion quadrant

Labels come from a `Q1_`..`Q4_` file-name prefix, or from `--labels CSV` (`fname,label`
rows, label Q1..Q4 or 1..4, optional header), or not at all with `--unlabeled` (emotion 0,
e.g. for pre-training corpora). A clip that cannot be used (unreadable, no piano notes, no
label, a token the given dictionary lacks) is reported and skipped; the others are written.
Exit status: 0 when a dataset was written, 2 when the input is unusable or no clip could be
encoded.
"""
import argparse
import os
import re
import sys
import traceback

from music.corpus import prepare_corpus
from music.errors import UserError


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Encode MIDI files as an EMOPIA-format compound-word dataset.",
        epilog="Exit status: 0 dataset written (possibly with skipped clips); 2 unusable input "
               "or no clip encoded.")
    parser.add_argument("--midi_dir", default=None,
                        help="folder of .mid/.midi files, searched recursively (required; "
                             "data/sample/midis holds a 32-clip sample)")
    parser.add_argument("--out_dir", default="data/co-representation", help="output folder (default: %(default)s)")
    parser.add_argument("--name", default="emopia", help="dataset name: {name}_data.npz, {name}_idx.npz")
    parser.add_argument("--dictionary", default=None,
                        help="reuse this dictionary.pkl (e.g. a trained model's) instead of building one; "
                             "clips with a token it lacks are skipped")
    labels = parser.add_mutually_exclusive_group()
    labels.add_argument("--labels", default=None, help="CSV of fname,label (Q1..Q4) instead of file-name prefixes")
    labels.add_argument("--unlabeled", action="store_true", help="no emotion labels (emotion field 0)")
    parser.add_argument("--sync", choices=("beats", "none"), default="beats",
                        help="beats: rewrite each clip on its tracked beats first, as EMOPIA's release "
                             "(default); none: encode the MIDI as given")
    parser.add_argument("--beat_cache", default=None,
                        help="folder of tracked beats, one file per clip content (default: OUT_DIR/beats)")
    parser.add_argument("--write_beat_table", default=None, metavar="NPZ",
                        help="also write the beats of every clip of this run as a table like "
                             "data/emopia_beats.npz (how that file is made)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="worker processes (default: number of CPUs, %(default)s)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if not re.fullmatch(r"[\w.-]+", args.name):
        parser.error(f"--name {args.name!r}: use letters, digits, '.', '_' or '-'")
    return args


def main(argv=None) -> int:
    """Parse flags and run; a UserError becomes 'error: ...' on stderr and exit status 2."""
    args = parse_args(argv)
    try:
        if args.midi_dir is None:
            raise UserError("--midi_dir is required: the folder of MIDI clips to encode (the full "
                            "EMOPIA MIDI folder for the paper; data/sample/midis is a 32-clip sample)")
        prepare_corpus(args.midi_dir, args.out_dir, args.name, dictionary=args.dictionary, labels=args.labels,
                       unlabeled=args.unlabeled, sync=args.sync, beat_cache=args.beat_cache,
                       write_beat_table_to=args.write_beat_table, workers=args.workers, debug=args.debug)
        return 0
    except UserError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
