"""The roles meet only in services/shared/: no role imports another, shared imports none.

The gateway (services/gateway), the agents (streams) and the sink (services/sink) each
import only themselves, services.shared and libraries; what two of them both need lives
in services/shared. Only the embedded composition (services/embedded.py, services/cli.py)
imports several roles, and it is not checked here. Read from the source with ``ast``, so
an import inside a function counts too and nothing is executed.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ROLES = ("services.gateway", "services.sink", "streams")
# package (a folder under the root) -> the packages its modules must not import
RULES = {
    "services/gateway": ("services.sink", "streams"),
    "services/sink": ("services.gateway", "streams"),
    "streams": ("services.gateway", "services.sink"),
    "services/shared": ROLES,
}


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, dotted name) of everything the module imports; ``from a import b`` gives both
    ``a`` and ``a.b`` (b may be a module), relative imports are resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _module_name(path, root)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def violations(root: Path) -> list[str]:
    """``path:line imports name`` for each import that crosses a role's boundary."""
    out: list[str] = []
    for folder, forbidden in RULES.items():
        for path in sorted((root / folder).rglob("*.py")):
            for line, name in imported(path, root):
                if any(_within(name, f) for f in forbidden):
                    out.append(f"{path.relative_to(root)}:{line} imports {name}")
    return sorted(set(out))


def test_roles_meet_only_in_shared() -> None:
    assert violations(ROOT) == []


def test_every_rule_names_a_folder_that_exists() -> None:
    """A rule for a folder that was moved away would check nothing and pass."""
    for folder in RULES:
        assert any((ROOT / folder).rglob("*.py")), folder


def test_a_crossing_import_is_flagged(tmp_path: Path) -> None:
    """The check can fail: each way of importing across roles is caught."""
    files = {
        "streams/__init__.py": "",
        "streams/ok.py": "from services.shared.ranking import recommend\nimport streams.ok\n",
        "streams/bad.py": "def f():\n    from services.gateway.views import Views\n",
        "services/__init__.py": "",
        "services/gateway/__init__.py": "",
        "services/gateway/bad.py": "import streams.model\nfrom streams import model\n",
        "services/gateway/rel.py": "from ..sink import consume\n",
        "services/sink/__init__.py": "",
        "services/shared/__init__.py": "",
        "services/shared/bad.py": "from services import gateway\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert violations(tmp_path) == [
        "services/gateway/bad.py:1 imports streams.model",
        "services/gateway/bad.py:2 imports streams",
        "services/gateway/bad.py:2 imports streams.model",
        "services/gateway/rel.py:1 imports services.sink",
        "services/gateway/rel.py:1 imports services.sink.consume",
        "services/shared/bad.py:1 imports services.gateway",
        "streams/bad.py:2 imports services.gateway.views",
        "streams/bad.py:2 imports services.gateway.views.Views",
    ]
