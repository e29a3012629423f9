"""music/elements.py is the one home of the element list: no other module spells it again."""
import ast

import pytest

from music import elements as el
from tests.conftest import ROOT

HOME = ROOT / "music" / "elements.py"
NAMES = set(el.FIELDS) | set(el.IDENTIFIERS) | set(el.ALIASES)
SOURCES = [p for p in sorted(ROOT.glob("*.py")) + sorted(ROOT.glob("*/*.py"))
           if p.parts[len(ROOT.parts)] in ("music", "models", "evaluation", "run", "bench")
           or p.parent == ROOT]


def respellings(tree):
    """Places that write the element list (or its count) again instead of naming it."""
    for node in ast.walk(tree):
        # a tuple, list or set literal of four or more element names (a few is a choice, not the list)
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            names = [e.value for e in node.elts if isinstance(e, ast.Constant) and e.value in NAMES]
            if len(set(names)) >= 4:
                yield node.lineno, f"spells the elements {names}"
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
    ("from music.elements import ELEMENTS", False),
])
def test_the_check_catches_a_respelling(source, caught):
    assert bool(list(respellings(ast.parse(source)))) == caught


def test_derived_constants_follow_the_list():
    assert el.FIELDS[:el.N_ELEMENTS] == el.ELEMENTS and el.FIELDS[el.EMOTION_FIELD] == el.EMOTION
    assert el.ELEMENTS[el.TYPE_FIELD] == "type"
    assert el.CONDITIONED == tuple(k for k in range(el.N_ELEMENTS) if k != el.TYPE_FIELD)
    assert all(el.ELEMENTS[el.element_index(alias)] == name for alias, name in el.ALIASES.items())
    assert el.element_slice("velocity", 16) == slice(96, 112)
