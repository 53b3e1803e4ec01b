"""The architecture contract: layers and acyclic packages (import-linter), the lint rules
(ruff), and what the light entry points load."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("importlinter", reason="import-linter comes with the test extra")


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command;"
                           " lint_imports_command()"],
                          cwd=root, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True)


@pytest.fixture
def tree_copy(tmp_path):
    """A copy of the package and its contract, to break on purpose."""
    shutil.copytree(ROOT / "seqatlas", tmp_path / "seqatlas",
                    ignore=shutil.ignore_patterns("__pycache__", "embedded", "data"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_package_keeps_its_contracts():
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize("module,line,broken", [
    # the storage layer importing the facade above it
    ("store/journal.py", "from seqatlas import atlas  # noqa", "Stages are layered"),
    ("store/backend.py", "from seqatlas.store import writer  # noqa", "No import circles"),
    # siblings of one layer importing each other
    ("scoring/windows.py", "import seqatlas.repeats.formats  # noqa", "Stages are layered"),
    # a circle inside a package, hidden in a function
    ("index/search.py", "def _f():\n    from seqatlas.index import build  # noqa", "circles"),
])
def test_a_forbidden_import_breaks_the_contract(tree_copy, module, line, broken):
    path = tree_copy / "seqatlas" / module
    path.write_text(path.read_text() + "\n\n" + line + "\n")
    result = _lint_imports(tree_copy)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "0 broken" not in result.stdout
    assert broken in result.stdout.split("Broken contracts")[-1]


def test_ruff_passes():
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff comes with the test extra")
    result = subprocess.run([ruff, "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _loaded(statement: str) -> list[str]:
    code = (f"import sys\n{statement}\n"
            "print('\\n'.join(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('seqatlas', 'torch', 'ray', 'faiss', 'transformers'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    return out.split()


def test_import_query_loads_no_scoring_and_no_index_build():
    loaded = _loaded("import seqatlas.query")
    assert not [m for m in loaded if m.startswith(("seqatlas.scoring", "seqatlas.index.build",
                                                   "seqatlas.index.shards", "seqatlas.repeats",
                                                   "torch", "ray", "faiss", "transformers"))]
    assert "seqatlas.query.engine" in loaded and "seqatlas.index.store" in loaded


def test_import_seqatlas_is_light():
    loaded = _loaded("import seqatlas")
    assert loaded == ["seqatlas", "seqatlas._version"]


def test_public_functions_do_not_shadow_modules():
    import importlib
    import pkgutil

    import seqatlas

    clashes = []
    for info in pkgutil.walk_packages(seqatlas.__path__, "seqatlas."):
        parent, _, name = info.name.rpartition(".")
        package = importlib.import_module(parent)
        exported = getattr(package, "__all__", [])
        if name in exported:
            clashes.append(info.name)
    assert clashes == []
    # the names users reach for resolve to what the README says
    assert callable(seqatlas.ingest) and callable(seqatlas.models)
    from seqatlas import repeats

    assert callable(repeats.copy_repeats)


def test_every_dotted_name_the_readme_mentions_resolves():
    import importlib
    import re

    names = set(re.findall(r"\bseqatlas(?:\.[A-Za-z_]\w*)+", (ROOT / "README.md").read_text()))
    assert "seqatlas.repeats.copy_repeats" in names
    for name in sorted(names):
        parts = name.split(".")
        target = importlib.import_module(parts[0])
        for i, part in enumerate(parts[1:], start=1):
            try:
                target = getattr(target, part)
            except AttributeError:
                target = importlib.import_module(".".join(parts[: i + 1]))
        assert target is not None, name
