"""Issue 17 item 3: the batch, results and stage modules import the package's own modules (and light standard ones)
at module level; an import inside a function is deliberately lazy (TensorFlow, papermill, Dask, pandas, matplotlib,
or an import cycle) and says why in a comment on its line."""
from __future__ import annotations

import ast

import pytest

from conftest import ROOT

MODULES = ["notebook_params", "records", "locking", "config", "results", "variants", "runner", "dask_study", "batch",
           "study", "unet/record"]


@pytest.mark.parametrize("name", MODULES)
def test_in_function_imports_are_lazy_on_purpose(name):
    path = ROOT / "lib" / "dualsynth" / f"{name}.py"
    lines = path.read_text(encoding="utf-8").splitlines()
    tree = ast.parse("\n".join(lines))
    unexplained = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                own = isinstance(node, ast.ImportFrom) and node.level > 0
                line = lines[node.lineno - 1]
                prev = lines[node.lineno - 2].strip()
                if "#" not in line and not prev.startswith("#"):
                    unexplained.append(f"{path.name}:{node.lineno}: {line.strip()}" + (" (own module)" if own else ""))
    assert not unexplained, "in-function imports without a reason:\n" + "\n".join(unexplained)
