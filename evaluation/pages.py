"""Self-contained listening pages (index.html) for the folders the scripts write.

One function per page kind: `write_generation_page` and `write_guidance_page`
(generate.py), `write_metrics_page`
(compute_metrics.py), `write_transfer_page` (element_transfer.py) and `write_study_page`
(a Markdown report, e.g. REPORT.md). Every page opens from the file system with no
network: the CSS is inline, there is no script, and every link is relative and points
inside the page's folder (anything else is shown as text). All text is HTML-escaped.
"""
from __future__ import annotations

import html
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import quote

import miditoolkit

from evaluation import metrics as M
from music.atomic import atomic_write
from music.piece import piece_from_midi

QUADRANT_TITLES = {1: "Q1: valence +, arousal + (happy, excited)",
                   2: "Q2: valence -, arousal + (tense, angry)",
                   3: "Q3: valence -, arousal - (sad, tired)",
                   4: "Q4: valence +, arousal - (calm, content)"}
AUDIO_SUFFIXES = (".mp3", ".wav")

CSS = """
body{font:16px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;
max-width:1200px;padding:12px;color:#222;background:#fafafa}
h1{font-size:1.5em}h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #ddd}
h3{font-size:1.05em}p,li,h1,h2,h3{overflow-wrap:anywhere}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:12px}
.row{display:grid;grid-template-columns:repeat(auto-fit,minmax(220px,1fr));gap:10px;
margin-bottom:16px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px;min-width:0}
.card h4{margin:0 0 6px;font-size:.95em;overflow-wrap:anywhere}
.card img,figure img{width:100%;height:auto;display:block;border:1px solid #eee;background:#fff}
p img{max-width:100%;height:auto}
.card img{aspect-ratio:5/2;object-fit:contain}
audio{width:100%;margin:6px 0}
.facts{font-size:.85em;margin:0}.facts td{padding:0 6px 0 0;border:0}
.pred{font-size:.85em;margin:4px 0 0}.ok{color:#1a7f37}.miss{color:#b35900}
.none{font-size:.85em;color:#777}
.table{overflow-x:auto}table{border-collapse:collapse;font-size:.9em;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 6px;text-align:left;white-space:nowrap}
figure{margin:12px 0}figcaption{font-size:.85em;color:#555}
code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.9em}
pre{overflow-x:auto;background:#f0f0f0;padding:8px}
"""


@dataclass
class Entry:
    """One piece on a page: its MIDI file and what is known about it."""
    midi: Path
    title: str
    audio: Path | None = None
    roll: Path | None = None
    facts: dict = field(default_factory=dict)   # label -> text
    prediction: str | None = None               # the evaluator's reading, as shown
    predicted: int | None = None                # the evaluator's quadrant
    match: bool | None = None                   # predicted == the quadrant asked for


def esc(text) -> str:
    return html.escape(str(text), quote=True)


def href(out_dir, path) -> str | None:
    """`path` relative to `out_dir`, URL-quoted; None when it is missing or lies outside."""
    path, out_dir = Path(path), Path(out_dir)
    if not path.exists():
        return None
    rel = os.path.relpath(path.resolve(), out_dir.resolve())
    if rel == ".." or rel.startswith(".." + os.sep) or os.path.isabs(rel):
        return None
    return quote(Path(rel).as_posix())


def audio_beside(midi) -> Path | None:
    """The rendered audio file next to a MIDI file, if there is one."""
    for suffix in AUDIO_SUFFIXES:
        candidate = Path(midi).with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


# ------------------------------------------------------------------- describing pieces

def describe(midis, titles=None, asked=None, evaluator=None, audio=None) -> list[Entry]:
    """Entries for MIDI files: roll = the PNG beside each file, audio = `audio[midi]` or the
    file beside it, facts = length and song metrics, prediction from the emotion evaluator.

    asked: the quadrant each piece was asked for (marks the prediction as a match or not).
    """
    midis = [Path(m) for m in midis]
    audio = audio or {}
    entries, pieces = [], []
    for i, midi in enumerate(midis):
        entry = Entry(midi, titles[i] if titles else midi.stem,
                      audio=audio.get(midi) or audio_beside(midi))
        roll = midi.with_suffix(".png")
        entry.roll = roll if roll.is_file() else None
        try:
            score = miditoolkit.MidiFile(str(midi))
            piece = piece_from_midi(score, name=midi.name)
        except Exception as exc:   # a page must not fail on one unreadable piece
            entry.facts = {"error": f"unreadable MIDI ({type(exc).__name__})"}
            entries.append(entry)
            pieces.append(None)
            continue
        seconds = score.get_tick_to_time_mapping()[score.max_tick] if score.max_tick else 0.0
        values = M.song_metrics(piece.notes)
        entry.facts = {"length": f"{seconds:.1f} s", "notes": str(len(piece.notes))}
        for key in ("pitch_range", "pitch_classes", "polyphony"):
            value = values[key]
            entry.facts[M.METRIC_LABELS[key]] = "n/a" if value != value else f"{value:.2f}"
        entries.append(entry)
        pieces.append(piece)
    if evaluator is not None:
        readable = [(e, p) for e, p in zip(entries, pieces) if p is not None and len(p.notes)]
        if readable:
            predicted = evaluator.predict([p for _, p in readable])
            for k, (entry, _) in enumerate(readable):
                arousal = "high" if predicted["arousal"][k] else "low"
                valence = "positive" if predicted["valence"][k] else "negative"
                entry.predicted = int(predicted["quadrant"][k])
                entry.prediction = f"evaluator: Q{entry.predicted} (arousal {arousal}, valence {valence})"
    if asked is not None:
        for entry, q in zip(entries, asked):
            entry.match = None if entry.predicted is None else entry.predicted == int(q)
    return entries


# --------------------------------------------------------------------------- HTML bits

def card(out_dir, entry: Entry) -> str:
    parts = [f'<div class="card"><h4>{esc(entry.title)}</h4>']
    roll = href(out_dir, entry.roll) if entry.roll else None
    if roll:
        parts.append(f'<a href="{roll}"><img src="{roll}" alt="piano roll of {esc(entry.midi.name)}" '
                     'loading="lazy"></a>')
    sound = href(out_dir, entry.audio) if entry.audio else None
    if sound:
        kind = "audio/mpeg" if sound.endswith(".mp3") else "audio/wav"
        parts.append(f'<audio controls preload="none"><source src="{sound}" type="{kind}"></audio>')
    else:
        parts.append('<p class="none">no audio</p>')
    links = []
    midi = href(out_dir, entry.midi)
    if midi:
        links.append(f'<a href="{midi}" download>MIDI</a>')
    if sound:
        links.append(f'<a href="{sound}" download>audio</a>')
    if links:
        parts.append("<div>" + " · ".join(links) + "</div>")
    if entry.facts:
        rows = "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in entry.facts.items())
        parts.append(f'<table class="facts">{rows}</table>')
    if entry.prediction:
        cls = {True: "ok", False: "miss", None: ""}[entry.match]
        mark = {True: " ✓", False: " ✗", None: ""}[entry.match]
        parts.append(f'<p class="pred {cls}">{esc(entry.prediction)}{mark}</p>')
    parts.append("</div>")
    return "".join(parts)


def grid(out_dir, entries, css_class: str = "grid") -> str:
    return f'<div class="{css_class}">' + "".join(card(out_dir, e) for e in entries) + "</div>"


def figure(out_dir, path, caption: str = "") -> str:
    src = href(out_dir, path)
    if not src:
        return ""
    return (f'<figure><a href="{src}"><img src="{src}" alt="{esc(caption or Path(path).name)}" '
            f'loading="lazy"></a><figcaption>{esc(caption or Path(path).name)}</figcaption></figure>')


def document(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            f"<h1>{esc(title)}</h1>\n{body}\n</body>\n</html>\n")


def write_page(out_dir, title: str, body: str) -> Path:
    path = Path(out_dir) / "index.html"
    text = document(title, body)
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))
    return path


def by_quadrant(out_dir, groups: dict[int, list[Entry]]) -> str:
    parts = []
    for q in sorted(groups):
        parts.append(f"<h2>{esc(QUADRANT_TITLES.get(q, f'quadrant {q}'))}</h2>")
        parts.append(grid(out_dir, groups[q]))
    return "\n".join(parts)


# ------------------------------------------------------------------ Markdown (a subset)

_INLINE = re.compile(r"`([^`]+)`|!\[([^\]]*)\]\(([^)\s]+)\)|\[([^\]]+)\]\(([^)\s]+)\)|\*\*(.+?)\*\*")


def _inline(text: str, out_dir, base) -> str:
    """Code spans, images, links and bold; local targets must lie inside out_dir."""
    out, last = [], 0
    for m in _INLINE.finditer(text):
        out.append(esc(text[last:m.start()]))
        last = m.end()
        code, alt, src, label, target, bold = m.groups()
        if code is not None:
            out.append(f"<code>{esc(code)}</code>")
        elif src is not None:
            local = None if "://" in src else href(out_dir, Path(base) / src)
            out.append(f'<img src="{local}" alt="{esc(alt)}" loading="lazy">' if local
                       else esc(f"[image: {alt or src}]"))
        elif label is not None:
            if "://" in target or target.startswith("mailto:"):
                # No network from the page: an outside address is shown, not linked.
                out.append(f"{_inline(label, out_dir, base)} ({esc(target)})")
                continue
            local = href(out_dir, Path(base) / target)
            if not local:
                out.append(_inline(label, out_dir, base))
                continue
            out.append(f'<a href="{local}">{_inline(label, out_dir, base)}</a>')
            sound = audio_beside(Path(base) / target) if target.endswith((".mid", ".midi")) else None
            if sound and href(out_dir, sound):
                out.append(f' <audio controls preload="none" src="{href(out_dir, sound)}"></audio>')
        else:
            out.append(f"<strong>{_inline(bold, out_dir, base)}</strong>")
    out.append(esc(text[last:]))
    return "".join(out)


def _cells(line: str) -> list[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|"):
        line = line[:-1]
    return [c.strip() for c in line.split("|")]


_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+(.*)$")


def markdown_to_html(text: str, out_dir, base=None) -> str:
    """Headings, paragraphs, pipe tables, lists, fenced code, images, links, code spans, bold.

    base: the folder that relative links in `text` are relative to (default out_dir).
    """
    base = Path(base) if base is not None else Path(out_dir)
    lines = text.splitlines()
    out, paragraph, i = [], [], 0

    def flush():
        if paragraph:
            out.append(f"<p>{_inline(' '.join(paragraph), out_dir, base)}</p>")
            paragraph.clear()

    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith("```"):
            flush()
            code, i = [], i + 1
            while i < len(lines) and not lines[i].strip().startswith("```"):
                code.append(lines[i])
                i += 1
            out.append(f"<pre><code>{esc(chr(10).join(code))}</code></pre>")
            i += 1
            continue
        heading = re.match(r"^(#{1,6})\s+(.*)$", stripped)
        if heading:
            flush()
            level = max(len(heading.group(1)), 2)   # the page title is the one h1
            out.append(f"<h{level}>{_inline(heading.group(2), out_dir, base)}</h{level}>")
            i += 1
            continue
        if stripped.startswith("|") and i + 1 < len(lines) and _TABLE_RULE.match(lines[i + 1]):
            flush()
            head = "".join(f"<th>{_inline(c, out_dir, base)}</th>" for c in _cells(stripped))
            rows, i = [], i + 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append("<tr>" + "".join(f"<td>{_inline(c, out_dir, base)}</td>"
                                             for c in _cells(lines[i])) + "</tr>")
                i += 1
            out.append(f'<div class="table"><table><thead><tr>{head}</tr></thead>'
                       f'<tbody>{"".join(rows)}</tbody></table></div>')
            continue
        if _LIST_ITEM.match(line):
            flush()
            ordered = bool(re.match(r"^\s*\d", line))
            items = []
            while i < len(lines) and _LIST_ITEM.match(lines[i]):
                items.append(f"<li>{_inline(_LIST_ITEM.match(lines[i]).group(1), out_dir, base)}</li>")
                i += 1
            tag = "ol" if ordered else "ul"
            out.append(f"<{tag}>{''.join(items)}</{tag}>")
            continue
        if not stripped:
            flush()
        else:
            paragraph.append(stripped)
        i += 1
    flush()
    return "\n".join(out)


def _markdown_file(path, out_dir) -> tuple[str | None, str]:
    """(first '# ' heading or None, HTML of the rest) of a Markdown file; ('', '') if absent."""
    path = Path(path)
    if not path.is_file():
        return None, ""
    text = path.read_text(encoding="utf-8", errors="replace")
    title = None
    first = re.match(r"^#\s+(.*)\n?", text)
    if first:
        title, text = first.group(1).strip(), text[first.end():]
    return title, markdown_to_html(text, out_dir, base=path.parent)


# ------------------------------------------------------------------------- the pages

def write_generation_page(out_dir, title: str, entries: list[Entry], quadrants, intro: str = "") -> Path:
    """generate.py: every piece, grouped by the quadrant it was asked for."""
    groups: dict[int, list[Entry]] = {}
    for entry, q in zip(entries, quadrants):
        groups.setdefault(int(q), []).append(entry)
    n_audio = sum(e.audio is not None for e in entries)
    body = (f"<p>{esc(intro)}</p>" if intro else "") + \
        f"<p>{len(entries)} pieces, {n_audio} with audio.</p>" + by_quadrant(out_dir, groups)
    return write_page(out_dir, title, body)


def write_guidance_page(out_dir, title: str, pairs: list[tuple[Entry, Entry]], quadrants,
                        labels: tuple[str, str], intro: str = "") -> Path:
    """generate.py --compare_guidance: per quadrant asked for, one row per seed position
    with the two pieces side by side (left labels[0], right labels[1])."""
    groups: dict[int, list[tuple[Entry, Entry]]] = {}
    for pair, q in zip(pairs, quadrants):
        groups.setdefault(int(q), []).append(pair)
    parts = [f"<p>{esc(intro)}</p>" if intro else "",
             f"<p>{len(pairs)} pairs of pieces: {esc(labels[0])} on the left, {esc(labels[1])} on the right.</p>"]
    for q in sorted(groups):
        parts.append(f"<h2>{esc(QUADRANT_TITLES.get(q, f'quadrant {q}'))}</h2>")
        for pair in groups[q]:
            labelled = [replace(e, title=f"{label}: {e.title}") for e, label in zip(pair, labels)]
            parts.append(grid(out_dir, labelled, css_class="row"))
    return write_page(out_dir, title, "\n".join(parts))


def write_metrics_page(out_dir, markdown_path, sources: dict[str, dict[int, list[Entry]]],
                       figures=()) -> Path:
    """compute_metrics.py: its Markdown tables, figures, then pieces per quadrant and source."""
    title, tables = _markdown_file(markdown_path, out_dir)
    parts = [tables] + [figure(out_dir, f) for f in figures]
    for q in sorted({q for groups in sources.values() for q in groups}):
        parts.append(f"<h2>{esc(QUADRANT_TITLES.get(q, f'quadrant {q}'))}</h2>")
        for source, groups in sources.items():
            if groups.get(q):
                parts.append(f"<h3>{esc(source)}</h3>" + grid(out_dir, groups[q]))
    return write_page(out_dir, title or "Objective metrics", "\n".join(parts))


def write_transfer_page(out_dir, markdown_path, transfers: dict[str, list[list[Entry]]]) -> Path:
    """element_transfer.py: its report, then per transfer and pair the four pieces side by
    side (A original, A reconstructed, transferred, B original), like the authors' demo."""
    title, report = _markdown_file(markdown_path, out_dir)
    parts = [report]
    for name, pairs in transfers.items():
        parts.append(f"<h2>{esc(name.replace('_', ' '))}: listen</h2>")
        for i, pair in enumerate(pairs):
            parts.append(f"<h3>pair {i}</h3>" + grid(out_dir, pair, css_class="row"))
    return write_page(out_dir, title or "Element transfer", "\n".join(parts))


def pair_midis(folder) -> list[list[Path]]:
    """The MIDI files of one transfer folder as pairs [A, A reconstructed, transferred, B]
    (pairs with a file missing are left out)."""
    order = (r"A_Q\d\.mid$", r"A_Q\d_reconstructed\.mid$", r"transferred.*\.mid$", r"B_Q\d\.mid$")
    pairs: dict[int, list] = {}
    for midi in Path(folder).glob("pair*_*.mid"):
        number = re.match(r"pair(\d+)_", midi.name)
        role = next((k for k, pattern in enumerate(order) if re.search(pattern, midi.name)), None)
        if number and role is not None:
            pairs.setdefault(int(number.group(1)), [None] * 4)[role] = midi
    return [pairs[k] for k in sorted(pairs) if None not in pairs[k]]


def write_study_page(out_dir, markdown_path, entries=(), title: str | None = None) -> Path:
    """A report page: the Markdown file (tables, figures, links; a link to a .mid file with
    audio beside it gets a player) and, when given, a grid of pieces to listen to."""
    heading, body = _markdown_file(markdown_path, out_dir)
    if entries:
        body += "\n<h2>Listen</h2>\n" + grid(out_dir, list(entries))
    return write_page(out_dir, title or heading or "Report", body)
