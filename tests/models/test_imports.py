"""The ``models`` package imports cleanly: every module on its own in a fresh interpreter,
no import cycle between its modules, and loading a model imports only that model's type."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import models

ROOT = Path(models.__file__).parent
MODULES = sorted(
    ".".join(("models", *p.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__")
    for p in ROOT.rglob("*.py")
)


def _internal_imports(path: Path, module: str) -> set[str]:
    """``models`` modules that ``path`` imports at module level (not under TYPE_CHECKING,
    not inside functions)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("models"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if not base.startswith("models"):
                continue
            for alias in node.names:
                child = f"{base}.{alias.name}"
                found.add(child if child in MODULES else base)
    return found - {module}


def test_no_import_cycles() -> None:
    graph = {m: _internal_imports(ROOT.parent / (m.replace(".", "/") + (
        "/__init__.py" if (ROOT.parent / m.replace(".", "/")).is_dir() else ".py")), m)
        for m in MODULES}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for module in MODULES:
        if module not in state:
            visit(module)


# One interpreter imports the third-party packages once, then forks a child per module that
# imports it with no ``models`` module loaded: what a fresh interpreter would do, in seconds
# rather than minutes (torch takes ~2 s to import).
_FORK_EACH = """
import os, sys, traceback
import cv2, numpy, pydicom, torch, torchvision  # noqa: F401 - third party, shared
failed = []
for module in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            __import__(module)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if status:
        failed.append(module)
print("FAILED", " ".join(failed))
"""


def test_each_module_imports_on_its_own() -> None:
    done = subprocess.run([sys.executable, "-c", _FORK_EACH, *MODULES], capture_output=True,
                          text=True, timeout=300, cwd=ROOT.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("FAILED"), done.stdout[-500:] + done.stderr[-3000:]


def test_loading_the_demo_model_imports_only_its_type() -> None:
    code = (
        "import sys\n"
        "from models.registry import load_model\n"
        "load_model()\n"
        "print(sorted(m for m in sys.modules if m.startswith('models.zoo.')))\n"
        "print('pytorch_grad_cam' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=ROOT.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    zoo, grad_cam = done.stdout.split("\n")[:2]
    assert zoo == "['models.zoo.global_pool']"
    assert grad_cam == "False"
