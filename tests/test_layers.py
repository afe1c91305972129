"""The import graph of the chatvlm package: no cycles, every import points down a declared
layer order, and nothing but the test builders imports a test builder.

The graph is read from the source with `ast` (nothing is imported). An edge A -> B means
module A names module B in an import statement anywhere in its file:

- module-level imports and imports inside functions (lazy imports) count alike. A lazy
  import defers loading, often to keep torch out of `chatvlm models`; it does not remove the
  dependency, and a lazy import of a higher module is how cycles hide.
- imports under `if TYPE_CHECKING:` do not count: they never run, and exist only so that
  an annotation (a string under `from __future__ import annotations`) can name a class.
- `from pkg import name` is an edge to `pkg.name` when that is a module, else to `pkg`
  (the package's __init__); `import a.b.c` is an edge to the deepest module of a.b.c.
  Importing a submodule also runs its parents' __init__ files; that is not counted, or
  every module would depend on chatvlm/__init__.py.
- imports by string (`importlib.import_module`) are not seen. chatvlm uses them at its two
  plug-in points only: a ModelSpec names its backend class by dotted path (the registry
  loads it on demand), and chatvlm/__init__.py resolves the public names lazily.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterable, Iterator

import chatvlm

PACKAGE_DIR = Path(chatvlm.__file__).parent

# The layer order, lowest first. A module may import modules of its own layer or of a lower
# one, never of a higher one (within a layer, the cycle test keeps the order acyclic).
# A name covers the module and everything below it ("chatvlm.models" is every model port);
# the longest matching name decides. Modules named `testing` are the test builders' layer
# whatever their folder (see TEST_BUILDERS). A new module must be placed here.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # plain data, messages and settings, which everything may use
    ("foundation", ("chatvlm.i18n", "chatvlm.click_i18n", "chatvlm.errors", "chatvlm.records", "chatvlm.paths",
                    "chatvlm.interrupt", "chatvlm.config", "chatvlm.model_spec", "chatvlm.model_table",
                    "chatvlm.registry", "chatvlm.timing", "chatvlm.roofline", "chatvlm.out_lock", "chatvlm.model_constants")),
    # work on pages without a model: inputs, batching, postprocessing, output files
    ("pages", ("chatvlm.sources", "chatvlm.image_files", "chatvlm.scheduler", "chatvlm.collate", "chatvlm.layout",
               "chatvlm.grounding", "chatvlm.latex", "chatvlm.textnorm", "chatvlm.loop_guard", "chatvlm.writers")),
    # our PyTorch ports of the remote-code models: they know nothing of the engine, the
    # backends or a run
    ("model ports", ("chatvlm.models",)),
    # the generation engine (model-agnostic, see test_engine_imports), the device and dtype
    # choice, and where weights come from: hub, --model-path, or synthetic checkpoints, whose
    # recipes build on the ports
    ("engine and weights", ("chatvlm.engine", "chatvlm.devices",
                            "chatvlm.byte_tokenizer", "chatvlm.synthetic", "chatvlm.weights")),
    # one adapter per model family, on the engine
    ("backends", ("chatvlm.backends",)),
    # one run: pages through a backend into files, here or on a Ray cluster
    ("runs", ("chatvlm.page_steps", "chatvlm.distributed", "chatvlm.pipeline")),
    # what users call: the Python API (chatvlm/__init__.py is its lazy façade), chat, bench,
    # the console display, model listings, the GPU check
    ("front ends", ("chatvlm", "chatvlm.api", "chatvlm.chat", "chatvlm.bench", "chatvlm.ui", "chatvlm.model_info",
                    "chatvlm.gpucheck", "chatvlm.gpucheck_plan", "chatvlm.gpucheck_report",
                    "chatvlm.gpucheck_targets")),
    # processes: the command line, the HTTP server, the web page
    ("entry points", ("chatvlm.cli", "chatvlm.cli_options", "chatvlm.__main__", "chatvlm.server", "chatvlm.web")),
    # tiny random-weight checkpoints for tests and demos: nothing in the package uses them
    ("test builders", ()),
]
TEST_BUILDERS = "test builders"


# --------------------------------------------------------------------------- the graph

def module_files(package_dir: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package (a package's
    __init__.py under the package's own name)."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = [package, *path.relative_to(package_dir).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _deepest_module(name: str, modules: Iterable[str]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of `tree`, at any depth, except the bodies of `if TYPE_CHECKING:`."""
    pending = [tree]
    while pending:
        node = pending.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            pending.extend(node.orelse)
            continue
        pending.extend(ast.iter_child_nodes(node))


def imports_of(module: str, path: Path, modules: dict[str, Path], package: str) -> set[str]:
    """The package's modules that `module` imports (module-level and lazy imports alike)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:   # relative: from the module's package, one level up per extra dot
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            submodules = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]
            targets = submodules + ([base] if len(submodules) < len(node.names) else [])
        else:
            continue
        for target in targets:
            if target == package or target.startswith(package + "."):
                resolved = _deepest_module(target, modules)
                if resolved is not None and resolved != module:
                    found.add(resolved)
    return found


def import_graph(package_dir: Path = PACKAGE_DIR, package: str = "chatvlm") -> dict[str, set[str]]:
    modules = module_files(package_dir, package)
    return {name: imports_of(name, path, modules, package) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def is_test_builder(module: str) -> bool:
    return module.rpartition(".")[2] == "testing"


def layer_of(module: str) -> int | None:
    """Index in LAYERS of `module`, or None when no layer names it."""
    names = [name for name, _ in LAYERS]
    if is_test_builder(module):
        return names.index(TEST_BUILDERS)
    best: tuple[int, int] | None = None   # (length of the matching name, layer)
    for rank, (_, members) in enumerate(LAYERS):
        for member in members:
            if module == member or module.startswith(member + ".") and member != "chatvlm":
                if best is None or len(member) > best[0]:
                    best = (len(member), rank)
    return None if best is None else best[1]


# --------------------------------------------------------------------------- the rules

GRAPH = import_graph()


def test_the_graph_covers_the_package():
    assert len(GRAPH) > 60
    assert "chatvlm.backends.hf" in GRAPH["chatvlm.backends.qwen2_vl"]
    # lazy imports are edges: the registry loads the built-in table on first use
    assert "chatvlm.model_table" in GRAPH["chatvlm.registry"]


def test_no_import_cycles():
    assert cycles(GRAPH) == []


def test_every_module_has_a_layer():
    assert [m for m in sorted(GRAPH) if layer_of(m) is None] == [], "place these modules in LAYERS"


def test_imports_point_down_the_layers():
    names = [name for name, _ in LAYERS]
    upward = sorted(f"{a} ({names[layer_of(a)]}) imports {b} ({names[layer_of(b)]})"
                    for a, targets in GRAPH.items() for b in targets
                    if layer_of(a) is not None and layer_of(b) is not None and layer_of(b) > layer_of(a))
    assert upward == []


def test_only_test_builders_import_test_builders():
    offending = sorted(f"{a} imports {b}" for a, targets in GRAPH.items() for b in targets
                       if is_test_builder(b) and not is_test_builder(a))
    assert offending == []


# --------------------------------------------------------------------------- the checks can fail

def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for name, text in {"__init__.py": "", **files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_a_lazy_import_that_closes_a_loop_is_a_cycle(tmp_path):
    root = _package(tmp_path, {
        "low.py": "def later():\n    from .high import thing\n",
        "high.py": "from .low import later\n",
        "alone.py": "import pkg.low\n",
        "typed.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .alone import X\nelse:\n    import pkg.high\n",
    })
    graph = import_graph(root, "pkg")
    assert graph["pkg.low"] == {"pkg.high"} and graph["pkg.alone"] == {"pkg.low"}
    assert graph["pkg.typed"] == {"pkg.high"}                        # annotations only: no edge
    assert cycles(graph) == [["pkg.high", "pkg.low"]]


def test_relative_and_submodule_imports_resolve(tmp_path):
    root = _package(tmp_path, {
        "sub/__init__.py": "VALUE = 1\n",
        "sub/leaf.py": "from .. import testing\nfrom . import VALUE\nfrom ..sub.leaf import x\n",
        "testing.py": "from pkg.sub import leaf\nfrom pkg import VERSION\n",
    })
    graph = import_graph(root, "pkg")
    assert graph["pkg.sub.leaf"] == {"pkg.testing", "pkg.sub"}      # itself is no edge
    assert graph["pkg.testing"] == {"pkg.sub.leaf", "pkg"}           # a name of __init__ -> the package
    assert is_test_builder("pkg.testing") and is_test_builder("chatvlm.models.dots_ocr.testing")


def test_layer_lookup_takes_the_longest_name():
    names = [name for name, _ in LAYERS]
    assert names[layer_of("chatvlm.models.dots_ocr.modeling")] == "model ports"
    assert names[layer_of("chatvlm.models.dots_ocr.testing")] == TEST_BUILDERS
    assert names[layer_of("chatvlm")] == "front ends"
    assert layer_of("chatvlm.something_new") is None                 # the package's name covers only itself
