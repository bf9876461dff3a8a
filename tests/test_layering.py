"""DESIGN §2's house rules as a test: no package imports a layer above it (lazy imports included)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = {"algorithms", "policy", "toyworld", "reward_services", "schedulers", "data", "actors", "cluster", "evaluation", "bench"}
# What each package may import from the project besides itself (DESIGN §2's table).
ALLOWED = {
    "algorithms": set(),
    "toyworld": set(),
    "schedulers": set(),
    "policy": {"algorithms"},
    "reward_services": {"algorithms", "toyworld"},
    "data": {"algorithms", "toyworld", "reward_services"},
    "evaluation": {"algorithms", "toyworld", "reward_services"},
    "actors": {"algorithms", "policy", "toyworld", "reward_services", "schedulers", "data"},
}


def project_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & PROJECT


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_no_upward_imports(package):
    violations = {
        str(path.relative_to(ROOT)): sorted(project_imports(path) - ALLOWED[package] - {package})
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    assert not {file: bad for file, bad in violations.items() if bad}
