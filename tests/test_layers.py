"""The architecture's rules, checked on the source: import layers without cycles, tasks without name branches,
modules of a readable size."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "transferkit"
BUILTIN_TASKS = {"classification", "multilabel", "regression"}


def test_imports_follow_the_layers_without_cycles():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if exe is None:
        pytest.skip("import-linter is not installed (pip install 'transferkit[dev]')")
    result = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def _task_name_branches(path: Path) -> list[str]:
    """``x == "classification"``, ``x in ("multilabel", ...)`` and the like: comparisons with a task name."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Compare):
            continue
        for operand in [node.left, *node.comparators]:
            values = operand.elts if isinstance(operand, (ast.Tuple, ast.List, ast.Set)) else [operand]
            if any(isinstance(v, ast.Constant) and v.value in BUILTIN_TASKS for v in values):
                found.append(f"{path.relative_to(SRC)}:{node.lineno}")
    return found


def test_no_module_outside_tasks_branches_on_a_task_name():
    """What differs by task lives in the task (``get_task(name).single_label``, ``.decode``, ...); only the
    data adapters, which parse a user's ``task=`` into targets, compare names."""
    allowed = ("tasks/", "data/adapters")
    offenders = [hit for path in sorted(SRC.rglob("*.py"))
                 if not str(path.relative_to(SRC)).startswith(allowed)
                 for hit in _task_name_branches(path)]
    assert not offenders, offenders


def test_the_branch_finder_finds_branches(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text('if task == "regression":\n    pass\nok = kind in ("a", "multilabel")\n', encoding="utf-8")
    global SRC
    old, SRC = SRC, tmp_path
    try:
        assert _task_name_branches(sample) == ["m.py:1", "m.py:3"]
    finally:
        SRC = old


def test_no_module_is_over_500_lines():
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 500}
    assert not long, long
