"""The dependency rules of actors/ (docs/architecture.md, "Layout"), read from the source.

- actors/substrate/ never imports a kind, not even lazily inside a function;
- a kind's core.py is a plain class: it imports neither Ray nor its own shell or client;
- every kind has the template's three modules;
- crews/ never imports actors/ or Ray at module level (it runs inside the runners and on its own).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ACTORS = ROOT / "actors"
KINDS = sorted(p.name for p in ACTORS.iterdir() if p.is_dir() and p.name != "substrate" and (p / "core.py").exists())


def imported_modules(path: Path, *, module_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_the_kinds_are_the_expected_ones():
    assert KINDS == ["event_hub", "flows", "learning", "ledger", "mailbox", "quotas", "revocations"]


@pytest.mark.parametrize("path", sorted((ACTORS / "substrate").glob("*.py")), ids=lambda p: p.name)
def test_substrate_never_imports_a_kind(path):
    kinds = {f"actors.{kind}" for kind in KINDS}
    wrong = sorted(m for m in imported_modules(path) if any(m == k or m.startswith(k + ".") for k in kinds))
    assert not wrong, f"{path.name} imports {wrong}"


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_follows_the_template(kind):
    folder = ACTORS / kind
    assert {"core.py", "actor.py", "client.py"} <= {p.name for p in folder.glob("*.py")}
    core = imported_modules(folder / "core.py")
    wrong = sorted(m for m in core if m == "ray" or m.startswith("ray.")
                   or m.startswith((f"actors.{kind}.actor", f"actors.{kind}.client")))
    assert not wrong, f"actors/{kind}/core.py imports {wrong}"


@pytest.mark.parametrize("path", sorted((ROOT / "crews").glob("*.py")), ids=lambda p: p.name)
def test_crews_do_not_import_actors_or_ray_at_module_level(path):
    wrong = sorted(m for m in imported_modules(path, module_level_only=True)
                   if m.split(".")[0] in {"actors", "ray", "sqlalchemy"})
    assert not wrong, f"crews/{path.name} imports {wrong}"


def test_crews_import_without_ray_or_sqlalchemy(tmp_path):
    """Not even transitively: the crews run in the flow runners, and on their own in a notebook."""
    import subprocess
    import sys

    probe = ("import sys, importlib, pkgutil, crews\n"
             "for m in pkgutil.walk_packages(crews.__path__, 'crews.'):\n"
             "    importlib.import_module(m.name)\n"
             "print(sorted(k for k in ('ray', 'sqlalchemy') if k in sys.modules))")
    env = {"CREWAI_DISABLE_TELEMETRY": "true", "OTEL_SDK_DISABLED": "true", "CREWAI_TRACING_ENABLED": "false",
           "CREWAI_DISABLE_VERSION_CHECK": "true", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
