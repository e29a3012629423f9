"""music/elements.py is the one home of the element list: no other module spells it again."""
import ast

import pytest

from music import elements as el
from music.elements import parse_quadrant, song_of_name, token_number
from tests.conftest import ROOT

HOME = ROOT / "music" / "elements.py"
NAMES = set(el.FIELDS) | set(el.IDENTIFIERS) | set(el.ALIASES)
SOURCES = [p for p in sorted(ROOT.glob("*.py")) + sorted(ROOT.glob("*/*.py"))
           if p.parts[len(ROOT.parts)] in ("music", "models", "evaluation", "run", "bench")
           or p.parent == ROOT]


CHECKED_TABLES = ("per_field", "per_element")


def respellings(tree):
    """Places that write the element list (or its count) again instead of naming it."""
    checked = {id(arg) for node in ast.walk(tree) if isinstance(node, ast.Call)
               and getattr(node.func, "id", getattr(node.func, "attr", None)) in CHECKED_TABLES
               for arg in node.args}
    for node in ast.walk(tree):
        # a table keyed by four or more element names that per_field / per_element do not check
        if isinstance(node, ast.Dict) and id(node) not in checked:
            names = [k.value for k in node.keys if isinstance(k, ast.Constant) and k.value in NAMES]
            if len(set(names)) >= 4:
                yield node.lineno, f"a table keyed by elements {names} without per_field/per_element"
        # a tuple, list or set literal of four or more element names (a few is a choice, not the list)
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            names = [e.value for e in node.elts if isinstance(e, ast.Constant) and e.value in NAMES]
            if len(set(names)) >= 4:
                yield node.lineno, f"spells the elements {names}"
        # the quadrants spelled again: (1, 2, 3, 4), range(1, 5), or a pattern reading Q[1-4]
        if isinstance(node, (ast.Tuple, ast.List)) and [getattr(e, "value", None) for e in node.elts] == [1, 2, 3, 4]:
            yield node.lineno, "spells the quadrants (1, 2, 3, 4)"
        if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "range"
                and [getattr(a, "value", None) for a in node.args] == [1, 5]):
            yield node.lineno, "range(1, 5) over the quadrants"
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "[1-4]" in node.value:
            yield node.lineno, "reads a quadrant with its own pattern"
        # N_ELEMENTS = 7, N_FIELDS = 8, ... : a count written as a number
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            for target in node.targets:
                if (isinstance(target, ast.Name) and any(w in target.id for w in ("ELEMENT", "FIELD"))
                        and isinstance(node.value.value, int) and not isinstance(node.value.value, bool)):
                    yield node.lineno, f"{target.id} = {node.value.value}"
        # range(7) / range(8): a loop over the elements by count
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range"
                and len(node.args) == 1 and isinstance(node.args[0], ast.Constant)
                and node.args[0].value in (el.N_ELEMENTS, el.N_FIELDS)):
            yield node.lineno, f"range({node.args[0].value})"
        # a latent width written as elements x slice width (112 = 7 x 16)
        if isinstance(node, ast.keyword) and node.arg == "latent_dim" and isinstance(node.value, ast.Constant):
            yield node.lineno, f"latent_dim={node.value.value}"
        # an embedding-width list with one literal per field
        if (isinstance(node, ast.keyword) and node.arg in ("emb_sizes", "vocab_sizes")
                and isinstance(node.value, ast.List) and len(node.value.elts) == el.N_FIELDS):
            yield node.lineno, f"{node.arg} as a literal list"
        # a word column by number: words[:, 3] where 3 is the type column
        if (isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Tuple)
                and len(node.slice.elts) == 2 and isinstance(node.slice.elts[0], ast.Slice)
                and isinstance(node.slice.elts[1], ast.Constant)
                and node.slice.elts[1].value in (el.TYPE_FIELD, el.EMOTION_FIELD)
                and isinstance(node.value, ast.Name) and node.value.id in ("w", "words", "word", "x", "y")):
            yield node.lineno, f"word column {node.slice.elts[1].value} by number"


def test_no_module_but_the_home_spells_the_element_list():
    found = [f"{p.relative_to(ROOT)}:{line}: {what}"
             for p in SOURCES if p != HOME
             for line, what in respellings(ast.parse(p.read_text()))]
    assert not found, "name the elements through music.elements instead:\n" + "\n".join(found)


@pytest.mark.parametrize("source, caught", [
    ('NAMES = ("tempo", "chord", "bar_beat", "type")', True),
    ('CHOSEN = ("pitch", "duration", "velocity")', False),
    ("N_ELEMENTS = 7", True),
    ("for k in range(7): pass", True),
    ("n = words[:, 3]", True),
    ('SHARES = {"pitch": 1}', False),
    ('T = {"tempo": 1, "chord": 2, "pitch": 3, "velocity": 4}', True),
    ('T = per_element({"tempo": 1, "chord": 2, "pitch": 3, "velocity": 4})', False),
    ('T = el.per_field({"tempo": 1, "chord": 2, "pitch": 3, "velocity": 4})', False),
    ("from music.elements import ELEMENTS", False),
    ("for q in (1, 2, 3, 4): pass", True),
    ("for q in range(1, 5): pass", True),
    ('PATTERN = r"^Q([1-4])_"', True),
    ("for q in QUADRANTS: pass", False),
])
def test_the_check_catches_a_respelling(source, caught):
    assert bool(list(respellings(ast.parse(source)))) == caught


def test_derived_constants_follow_the_list():
    assert el.FIELDS[:el.N_ELEMENTS] == el.ELEMENTS and el.FIELDS[el.EMOTION_FIELD] == el.EMOTION
    assert el.ELEMENTS[el.TYPE_FIELD] == "type"
    assert el.CONDITIONED == tuple(k for k in range(el.N_ELEMENTS) if k != el.TYPE_FIELD)
    assert all(el.ELEMENTS[el.element_index(alias)] == name for alias, name in el.ALIASES.items())
    assert el.element_slice("velocity", 16) == slice(96, 112)


def test_per_element_tables_must_name_every_element_once():
    table = {name: i for i, name in enumerate(el.ELEMENTS)}
    assert list(el.per_element(dict(reversed(table.items())))) == list(el.ELEMENTS)
    with pytest.raises(ValueError, match="one value per element"):
        el.per_element({k: v for k, v in table.items() if k != "velocity"})
    with pytest.raises(ValueError, match="one value per element"):
        el.per_element({**table, "loudness": 7})


def test_names_and_tokens_are_read_by_one_rule_each():
    assert parse_quadrant(" q2 ") == 2 and parse_quadrant("4") == 4 and parse_quadrant("Q5") is None
    assert token_number("Note_Pitch_60") == 60 and token_number("Tempo_84", "Tempo_") == 84
    assert token_number("Note_Duration_0", "Note_Pitch_") is None            # another kind
    for no_number in (0, "CONTI", "Bar", "C_M", "N_N", "Note_Pitch_x", None):
        assert token_number(no_number) is None
    assert song_of_name("Q2_a_b_c_12.midi") == "a_b_c"
