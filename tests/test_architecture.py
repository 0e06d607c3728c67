"""The architecture of docs/architecture.md, pinned: one-way flow, no private cross-package
imports, h5py only in cache/, and modules that read in one sitting.

Read with ``ast`` from the source, so a lazy import inside a function counts as much as one at
the top of a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cli", "compare", "service", "extract", "heads", "cache")
# Which of colhead's packages each one may import (its public names only). Leaves at the root
# (_device, _version) are open to all. The flow is one way: cli -> compare | service -> extract
# -> cache, with heads beside cache (heads never import extract).
ALLOWED = {
    "cli": {"compare", "service", "extract", "heads", "cache"},
    "compare": {"extract", "heads", "cache"},
    "service": {"extract", "heads", "cache"},
    "extract": {"cache"},
    "heads": set(),
    "cache": set(),
}
LEAVES = {"_device", "_version"}


def _modules():
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).glob("*.py")):
            yield pkg, path
    for path in sorted(ROOT.glob("*.py")):
        yield "", path


def _colhead_imports(pkg: str, path: Path):
    """(target package, target module or None, line) for each import of colhead code."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if node.module and node.module.split(".")[0] == "colhead":
                    parts = node.module.split(".")[1:]
                else:
                    continue
            elif node.level == 1 and pkg:  # inside our own package
                continue
            else:
                parts = (node.module or "").split(".") if node.module else []
            if not parts or not parts[0]:
                # ``from .. import x``: x are names of the root package or its modules
                for alias in node.names:
                    yield alias.name, None, node.lineno
                continue
            if len(parts) > 1:
                yield parts[0], parts[1], node.lineno
                continue
            # ``from ..extract import _images`` imports a module by name, too
            for alias in node.names:
                is_module = (ROOT / parts[0] / f"{alias.name}.py").exists()
                yield parts[0], (alias.name if is_module else None), node.lineno


def test_flow_is_one_way_and_imports_are_public():
    problems = []
    for pkg, path in _modules():
        rel = path.relative_to(ROOT)
        for target, module, line in _colhead_imports(pkg, path):
            if target in LEAVES or target == pkg:
                continue
            if target not in PACKAGES:
                continue
            if pkg and target not in ALLOWED[pkg]:
                problems.append(f"{rel}:{line} imports {target} (the flow is one way)")
            if module and module.startswith("_"):
                problems.append(f"{rel}:{line} imports {target}.{module}, a private module")
    assert problems == []


def test_only_cache_imports_h5py():
    offenders = []
    for pkg, path in _modules():
        if pkg == "cache":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            if any(n.split(".")[0] == "h5py" for n in names):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


@pytest.mark.parametrize("pkg,path", list(_modules()), ids=lambda v: str(v))
def test_modules_read_in_one_sitting(pkg, path):
    lines = len(path.read_text().splitlines())
    assert lines <= 400, f"{path.relative_to(ROOT)} has {lines} lines; split it along a named seam"


def test_the_checker_sees_a_private_cross_package_import(tmp_path, monkeypatch):
    # The rule above must be able to fail: a module importing another package's private one.
    fake = tmp_path / "heads"
    fake.mkdir()
    (fake / "_bad.py").write_text(
        "from ..extract._images import decode\nfrom ..extract import _images, decode\n"
    )
    found = list(_colhead_imports("heads", fake / "_bad.py"))
    assert ("extract", "_images", 1) in found
    assert ("extract", "_images", 2) in found
    assert ("extract", None, 2) in found
