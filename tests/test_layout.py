"""The house rules that keep labfast readable, checked on every run: the import layers
(import-linter's contracts in pyproject.toml), module and function sizes."""
import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 500  # labfast/ modules; a kernel file may be longer where one op needs it
MAX_FUNCTION_LINES = 80


def _library_files():
    return sorted(path for path in (ROOT / "labfast").rglob("*.py") if "kernels" not in path.relative_to(ROOT).parts)


def test_import_layers_hold():
    """commands > perf > train > evaluation > inference > checkpoint > model > ops > kernels > foundations; no circles."""
    # the interpreter's own environment first: a venv's python may run without the venv on PATH
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if lint is None:
        pytest.fail("import-linter is not installed (requirements.txt lists it): pip install import-linter")
    result = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_no_library_module_is_over_500_lines():
    long = {str(path.relative_to(ROOT)): lines for path in _library_files()
            if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"split these modules (over {MAX_MODULE_LINES} lines): {long}"


def test_no_function_is_over_80_lines():
    files = [*_library_files(), *sorted((ROOT / "kernels").glob("*.py"))]
    long = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"] = lines
    assert not long, f"split these functions (over {MAX_FUNCTION_LINES} lines): {long}"
