"""The package layers: every import points down (or sideways where allowed), never up.

    scripts (top-level *.py), tests, bench
    run/          training loop, checkpoints, distributed, VQ_dict, CLI, study
    models/  evaluation/   side by side; neither imports the other
    music/        representation, element list, file formats, errors, atomic writes

Imports inside functions count too: a lazy import does not make an upward arrow legal.
"""
import ast

from tests.conftest import ROOT

# Which project packages each package may import (itself included).
ALLOWED = {
    "music": {"music"},
    "models": {"music", "models"},
    "evaluation": {"music", "evaluation"},
    "run": {"music", "models", "evaluation", "run"},
}
PACKAGES = set(ALLOWED)


def imported_modules(path):
    """(line, module) of every absolute import in a file, wherever it stands."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


def imported_packages(path):
    """(line, top-level project package) of every import in a file."""
    for line, name in imported_modules(path):
        top = name.split(".")[0]
        if top in PACKAGES or top in ("utils", "scripts", "tests", "bench"):
            yield line, top


def test_every_package_imports_only_the_layers_below_it():
    wrong = []
    for package, allowed in ALLOWED.items():
        assert (ROOT / package).is_dir(), f"no {package}/ folder"
        for path in sorted((ROOT / package).rglob("*.py")):
            for line, top in imported_packages(path):
                if top not in allowed:
                    wrong.append(f"{path.relative_to(ROOT)}:{line} imports {top}")
    assert not wrong, "upward or sideways imports:\n" + "\n".join(wrong)


def test_no_package_imports_a_script():
    scripts = {p.stem for p in ROOT.glob("*.py")}
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {name}"
             for package in ALLOWED for path in sorted((ROOT / package).rglob("*.py"))
             for line, name in imported_modules(path) if name.split(".")[0] in scripts]
    assert not wrong, "\n".join(wrong)


def test_the_layer_check_sees_an_upward_import(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("def f():\n    from run.cli import run_main\n")
    assert list(imported_packages(path)) == [(2, "run")]
