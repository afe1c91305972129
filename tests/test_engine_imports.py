"""The engine is model-agnostic: no module of chatvlm/engine imports a backend or a model
port (adapters hand it data and callables instead)."""

import ast
from pathlib import Path

import chatvlm.engine

ENGINE = Path(chatvlm.engine.__file__).parent
FORBIDDEN = ("chatvlm.backends", "chatvlm.models")


def _imported_modules(path: Path) -> list[str]:
    """Absolute names of every module a file imports (relative imports resolved)."""
    package = "chatvlm.engine"
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(parent + ([base] if base else []))
            # `from .. import backends` names the module in the alias
            names += [base] + [f"{base}.{alias.name}" for alias in node.names]
    return names


def test_engine_imports_no_backend_or_model():
    files = sorted(ENGINE.glob("*.py"))
    assert len(files) >= 3      # __init__, continuous, memory at least
    offending = {f"{path.name}: {name}" for path in files for name in _imported_modules(path)
                 if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN)}
    assert not offending, sorted(offending)


def test_the_import_walk_sees_relative_imports(tmp_path):
    # the check itself could fail: a relative import of a backend is caught
    bad = tmp_path / "bad.py"
    bad.write_text("from ..backends.hf import HFBackend\nfrom .. import models\n")
    names = _imported_modules(bad)
    assert "chatvlm.backends.hf" in names and "chatvlm.models" in names
