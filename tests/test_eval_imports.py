"""Evaluation does not know the demo: no module of evaluation/ outside the zoo builder imports it.

The zoo is one producer of models and suites; evaluation, gates and the pipeline read what it wrote
through evaluation/zoo_source.py. A static check, so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

EVALUATION = Path(__file__).resolve().parents[1] / "evaluation"
MODULES = sorted(EVALUATION.glob("*.py"))


def _zoo_imports(path: Path) -> list[str]:
    """Every import of evaluation.zoo (or a submodule) in ``path``, as written, with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from .zoo import x / from . import zoo (evaluation/ is the package)
                base = ".".join(["evaluation", *(node.module.split(".") if node.module else [])])
            else:
                base = node.module or ""
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name == "evaluation.zoo" or name.startswith("evaluation.zoo."):
                found.append(f"{path.name}:{node.lineno}: {name}")
                break
    return found


def test_the_check_sees_every_way_of_importing_the_zoo(tmp_path):
    sample = tmp_path / "m.py"
    for line in ("import evaluation.zoo", "import evaluation.zoo.build as b", "from evaluation.zoo import load_zoo",
                 "from evaluation.zoo.index import X", "from evaluation import zoo", "from .zoo import build_zoo",
                 "from . import zoo", "def f():\n    from evaluation.zoo import build_zoo"):
        sample.write_text(line + "\n")
        assert _zoo_imports(sample), line
    sample.write_text("from evaluation.zoo_source import load_zoo\nimport evaluation.zoo_source\n"
                      "from evaluation import zoo_source\n")
    assert _zoo_imports(sample) == []


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_evaluation_outside_the_zoo_builder_does_not_import_it(path):
    assert _zoo_imports(path) == [], "import the zoo's index through evaluation.zoo_source instead"


def test_there_is_something_to_check():
    assert {"run.py", "suites.py", "contamination.py", "zoo_source.py"} <= {p.name for p in MODULES}
