"""Listening pages: self-contained, every reference inside the folder and present, every
audio file decodes and lasts as long as its MIDI, and the pages survive a bad SoundFont."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import soundfile

import compute_metrics
from tests.test_audio import midi_seconds, write_midi
from evaluation import pages as P
from evaluation.audio import render_all


class References(HTMLParser):
    """Every src/href of a page, plus the tags seen (to catch scripts and style sheets)."""

    def __init__(self):
        super().__init__()
        self.refs, self.tags, self.audio = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href") and value is not None:
                self.refs.append(value)
                if tag in ("source", "audio") and name == "src":
                    self.audio.append(value)


def check_page(page: Path) -> References:
    """Assert what every page must hold; return its references for further checks."""
    text = page.read_text(encoding="utf-8")
    parser = References()
    parser.feed(text)
    parser.close()
    assert text.startswith("<!DOCTYPE html>") and 'name="viewport"' in text
    assert "script" not in parser.tags and "link" not in parser.tags and "@import" not in text
    assert "url(" not in text                  # no CSS-loaded resource either
    root = page.parent.resolve()
    for ref in parser.refs:
        parts = urlsplit(ref)
        assert not parts.scheme and not parts.netloc and not ref.startswith("/"), ref
        target = (page.parent / unquote(parts.path)).resolve()
        assert root in target.parents, f"{ref} leaves {root}"
        assert target.is_file(), f"{ref} is missing"
    for ref in parser.audio:
        audio = page.parent / unquote(ref)
        data, rate = soundfile.read(str(audio))
        midi = audio.with_suffix(".mid")
        assert abs(len(data) / rate - midi_seconds(midi)) < 1.0, audio
    return parser


def make_pieces(folder: Path, names) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [write_midi(folder / f"{name}.mid", n_beats=4 + i, seconds_per_beat=0.4)
            for i, name in enumerate(names)]


def test_generation_page_lists_every_piece_with_its_audio(tmp_path):
    names = [f"emotion{q}_{i}" for q in (1, 2, 3, 4) for i in range(2)]
    midis = make_pieces(tmp_path / "run", names)
    audio = render_all(midis)
    entries = P.describe(midis, asked=[int(n[7]) for n in names], audio=audio)
    page = P.write_generation_page(tmp_path / "run", "Generated: <run> & co", entries,
                                   [int(n[7]) for n in names])
    refs = check_page(page)
    text = page.read_text()
    assert len(refs.audio) == len(names)
    assert all(f"{n}.mid" in refs.refs for n in names)
    assert "Generated: &lt;run&gt; &amp; co" in text and "<run>" not in text
    assert text.count("<h2>") == 4 and "pitch range" in text


def test_transfer_page_shows_the_four_roles_side_by_side(tmp_path):
    out = tmp_path / "transfer"
    folder = out / "velocity_Q4toQ1"
    stems = ["A_Q4", "A_Q4_reconstructed", "transferred_tag_Q1", "B_Q1"]
    midis = make_pieces(folder, [f"pair{i}_{s}" for i in range(2) for s in stems])
    render_all(midis[:4])                       # pair 1 without audio: still listed
    (out / "transfer.md").write_text("# Element transfer with <model>\n\n## velocity: Q4 -> Q1\n\n"
                                     "| role | **velocity** |\n|---|---|\n| A original | 50.00 |\n")
    pairs = P.pair_midis(folder)
    assert [[m.name for m in pair] for pair in pairs] == [[f"pair{i}_{s}.mid" for s in stems]
                                                          for i in range(2)]
    page = P.write_transfer_page(out, out / "transfer.md",
                                 {folder.name: [P.describe(p) for p in pairs]})
    refs = check_page(page)
    text = page.read_text()
    assert len(refs.audio) == 4 and text.count('class="row"') == 2 and text.count("no audio") == 4
    assert "<table>" in text and "<strong>velocity</strong>" in text
    assert "<title>Element transfer with &lt;model&gt;</title>" in text


def test_study_page_turns_markdown_into_html_and_keeps_links_inside(tmp_path):
    out = tmp_path / "study"
    midi, = make_pieces(out / "pieces", ["emotion1_0"])
    render_all([midi])
    (out / "fig.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "outside.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    report = out / "REPORT.md"
    report.write_text("\n".join([
        "# Reproduction study", "", "Intro with `code` and **bold** <script>alert(1)</script>.",
        "", "## Table", "", "| a | b |", "|---|:---:|", "| 1 | 2 |", "| 3 | [piece](pieces/emotion1_0.mid) |",
        "", "![the figure](fig.png)", "", "![outside](../outside.png)", "",
        "- one [paper](https://arxiv.org/abs/2312.10307)", "- two", "", "1. first", "2. second",
        "", "```", "make demo <x>", "```", "", "[missing](nothing.mid)"]))
    page = P.write_study_page(out, report, entries=P.describe([midi]))
    refs = check_page(page)
    text = page.read_text()
    assert "<title>Reproduction study</title>" in text and "<h2>Table</h2>" in text
    assert "<td>1</td><td>2</td>" in text and '<img src="fig.png" alt="the figure"' in text
    assert "&lt;script&gt;" in text and "<code>code</code>" in text and "<strong>bold</strong>" in text
    assert "[image: outside]" in text and "outside.png" not in refs.refs
    assert "https://arxiv.org/abs/2312.10307" in text and "arxiv" not in "".join(refs.refs)
    assert "<ul><li>one" in text and "<ol><li>first</li>" in text and "make demo &lt;x&gt;" in text
    assert len(refs.audio) == 2                # the linked MIDI's player and the listed piece
    assert "nothing.mid" not in refs.refs


def test_metrics_page_copies_its_pieces_inside_and_survives_a_bad_soundfont(tmp_path, capsys):
    generated = tmp_path / "generated"
    make_pieces(generated, [f"emotion{q}_0" for q in (1, 2, 3, 4)])
    bad = tmp_path / "bad.sf2"
    bad.write_bytes(b"RIFF but not really")
    out = tmp_path / "metrics"
    fast = ["--generated", str(generated), "--out_dir", str(out), "--piano_rolls", "0"]
    assert compute_metrics.main([*fast, "--soundfont", str(bad)]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and str(bad) in warnings[0]
    refs = check_page(out / "index.html")
    assert refs.audio == [] and "violins.png" in refs.refs
    assert all((out / "pieces" / "generated" / f"emotion{q}_0.mid").is_file() for q in (1, 2, 3, 4))
    # With the default SoundFont the same run has a player for every listed piece.
    assert compute_metrics.main(fast) == 0
    assert len(check_page(out / "index.html").audio) == 4


@pytest.mark.skipif(not shutil.which("chromium"), reason="no chromium on this machine")
def test_chromium_opens_the_page_from_the_file_system(tmp_path):
    midis = make_pieces(tmp_path / "run", ["emotion1_0", "emotion2_0"])
    render_all(midis)
    page = P.write_generation_page(tmp_path / "run", "Generated", P.describe(midis), [1, 2])
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                              "--disable-background-networking", "--disable-component-update",
                              "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                              "--dump-dom", page.resolve().as_uri()],
                             capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": profile})
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<audio") == 2 and "emotion2_0.mid" in dom.stdout
