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


# Project imports that stay inside a function, each for the reason given beside it: evaluation.plotting
# loads matplotlib, slow to import, and these callers draw only on request or must not fail on it.
LATE_IMPORTS = {("generate.py", "evaluation.plotting"), ("evaluation/latent_space.py", "evaluation.plotting"),
                ("run/training.py", "evaluation.plotting")}


def late_project_imports(path):
    """Project modules (packages and scripts) a file imports inside a function."""
    project = PACKAGES | {p.stem for p in ROOT.glob("*.py")}
    for function in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(function):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                yield from (name for name in names if name.split(".")[0] in project)


def test_project_imports_stand_at_the_top_of_their_module():
    """An import inside a function hides a dependency that the layers allow at the top."""
    paths = [*ROOT.glob("*.py"), *(p for package in ALLOWED for p in (ROOT / package).rglob("*.py"))]
    late = {(str(path.relative_to(ROOT)), name) for path in paths for name in late_project_imports(path)}
    assert late <= LATE_IMPORTS, f"imports to move to the top: {sorted(late - LATE_IMPORTS)}"


def test_the_late_import_check_sees_one(tmp_path):
    path = tmp_path / "lazy.py"
    path.write_text("import numpy\n\ndef f():\n    import numpy\n    from music.cp import load_dictionary\n")
    assert list(late_project_imports(path)) == ["music.cp"]
