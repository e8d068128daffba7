"""The import rules of docs/architecture.md hold: layers, heavy libraries, pure modules, no cycles, a silent library.

The module map and the layers are read from the page itself (its two tables), so the page states them once
and this test holds the code to them. Imports are read from the source (ast), not by importing: imports
inside functions count, imports under `if TYPE_CHECKING:` (type hints only) do not. Rules the page names as
goals are expected failures until they hold (strict: once one holds, its mark must go, and the page's goal
becomes a rule).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

import pytest
from conftest import ROOT

PACKAGE = ROOT / "scorecli"
PAGE = ROOT / "docs" / "architecture.md"
HEAVY = ("torch", "transformers", "rich", "typer", "ray", "plotly", "lm_eval")


@dataclass
class Module:
    """A module of the package: its path under scorecli/ and what it imports (scorecli modules, top-level names)."""

    path: str
    scorecli: set[str] = field(default_factory=set)
    libraries: set[str] = field(default_factory=set)
    private: set[str] = field(default_factory=set)  # `module.name` of underscore names imported from other modules
    tree: ast.Module | None = None


def _resolve(name: str, paths: set[str]) -> str | None:
    """The module path (under scorecli/) of a dotted name inside the package, or None if it names no module."""
    parts = name.split(".")[1:]
    for candidate in ("/".join(parts) + ".py", "/".join([*parts, "__init__.py"])):
        if candidate in paths:
            return candidate
    return None


def _dotted(path: str) -> str:
    """The dotted name of a module path under scorecli/ (a package's __init__.py: the package's)."""
    parts = path.removesuffix(".py").split("/")
    return ".".join(["scorecli", *(parts[:-1] if parts[-1] == "__init__" else parts)])


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def read_modules() -> dict[str, Module]:
    """Every module of the package, with the imports its source makes."""
    paths = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")}
    modules = {}
    for path in sorted(paths):
        module = Module(path, tree=ast.parse((PACKAGE / path).read_text(encoding="utf-8")))
        package = _dotted(path) if path.endswith("__init__.py") else _dotted(path).rpartition(".")[0]
        parents = {child: node for node in ast.walk(module.tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(module.tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)) or _type_checking_only(node, parents):
                continue
            if isinstance(node, ast.Import):
                names = [(alias.name, None) for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], base]).strip(".")
                names = [(base, alias.name) for alias in node.names]
            for name, imported in names:
                if name.split(".")[0] != "scorecli":
                    module.libraries.add(name.split(".")[0])
                    continue
                # `from scorecli.x import y` imports the module y where there is one, else a name of x.
                target = (imported and _resolve(f"{name}.{imported}", paths)) or _resolve(name, paths)
                if target and target != path:
                    module.scorecli.add(target)
                    if imported and imported.startswith("_") and not imported.startswith("__"):
                        module.private.add(f"{target.removesuffix('.py')}.{imported}")
        modules[path] = module
    return modules


def _table(text: str, header: list[str]) -> list[list[str]]:
    """The rows of the page's table with this header, as cells (backticks removed)."""
    rows, inside = [], False
    for line in text.splitlines():
        cells = None
        if line.startswith("|"):
            cells = [c.strip().replace("`", "") for c in line.strip().strip("|").split("|")]
        if cells == header:
            inside = True
        elif inside and cells is None:
            break
        elif inside and not set(cells[0]) <= set("-:"):
            rows.append(cells)
    assert rows, f"docs/architecture.md: no table headed {header}"
    return rows


def _names(cell: str) -> set[str]:
    """The comma-separated names of a table cell (`none`: no name)."""
    return {name.strip() for name in cell.split(",") if name.strip() and name.strip() != "none"}


MODULES = read_modules()
PAGE_TEXT = PAGE.read_text(encoding="utf-8")
LAYER_OF = {module: layer for module, layer, _ in _table(PAGE_TEXT, ["module", "layer", "owns"])}
LAYERS = {
    layer: (_names(inner), _names(heavy))
    for layer, inner, heavy in _table(PAGE_TEXT, ["layer", "imports from scorecli", "heavy libraries"])
}
ALL = set(LAYERS)

# Goals the page states that do not hold yet: (test id, the reason).
GOALS: dict[str, str] = {}


def goal(test_id: str) -> list[pytest.MarkDecorator]:
    """An expected failure while the page names this rule as a goal, or nothing once it is not one."""
    reason = GOALS.get(test_id)
    return [pytest.mark.xfail(reason=reason, strict=True)] if reason else []


def test_the_module_map_lists_every_module_and_no_other():
    assert sorted(LAYER_OF) == sorted(MODULES), "docs/architecture.md's module map and scorecli/ differ"
    unknown = {module: layer for module, layer in LAYER_OF.items() if layer not in LAYERS}
    assert not unknown, f"layers without a row in the layers table: {unknown}"


@pytest.mark.parametrize("path", [pytest.param(p, id=p, marks=goal(f"layers[{p}]")) for p in MODULES])
def test_a_module_imports_only_from_the_layers_its_layer_may_import(path):
    layer = LAYER_OF.get(path)
    if layer is None:
        pytest.fail(f"{path} is not in docs/architecture.md's module map", pytrace=False)
    allowed = ALL if LAYERS[layer][0] == {"all"} else LAYERS[layer][0]
    wrong = {target: LAYER_OF.get(target) for target in MODULES[path].scorecli if LAYER_OF.get(target) not in allowed}
    assert not wrong, f"{path} ({layer}) imports from layers it may not: {wrong}"
    heavy = {lib for lib in MODULES[path].libraries if lib in HEAVY} - LAYERS[layer][1]
    assert not heavy, f"{path} ({layer}) imports {sorted(heavy)}, which its layer may not"


def test_pure_modules_import_no_other_scorecli_module_and_stats_no_model_code():
    pure = [
        "engine/stats.py",
        "engine/prefix.py",
        "data/words.py",
        "analysis/heat.py",
        "analysis/bootstrap.py",
        "base/errors.py",
        "base/faults.py",
        "data/measures.py",
    ]
    assert {p: sorted(MODULES[p].scorecli) for p in pure if MODULES[p].scorecli} == {}
    assert MODULES["base/interrupts.py"].scorecli <= {"base/faults.py"}
    assert MODULES["engine/stats.py"].libraries & set(HEAVY) == {"torch"}
    assert not {
        p
        for p in ["engine/prefix.py", "data/words.py", "analysis/heat.py", "analysis/bootstrap.py"]
        if "torch" in MODULES[p].libraries
    }


def test_only_the_cli_imports_typer():
    assert sorted(p for p, m in MODULES.items() if "typer" in m.libraries) == ["cli.py"]


def test_no_import_cycle():
    graph = {path: module.scorecli for path, module in MODULES.items()}
    done: set[str] = set()

    def visit(path: str, trail: list[str]) -> None:
        if path in trail:
            pytest.fail("import cycle: " + " → ".join([*trail[trail.index(path) :], path]), pytrace=False)
        if path not in done:
            for target in sorted(graph[path]):
                visit(target, [*trail, path])
            done.add(path)

    for path in sorted(graph):
        visit(path, [])


PRINT_OR_EXIT = ("print", "exit", "quit", "sys.exit", "os._exit", "sys.stdout", "sys.stderr")


def _prints_or_exits(tree: ast.Module) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in PRINT_OR_EXIT:
            found.append(f"line {node.lineno}: {node.func.id}()")
        elif isinstance(node, ast.Attribute) and ast.unparse(node) in PRINT_OR_EXIT:
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_the_library_never_prints_and_never_exits():
    front = {"cli.py", "__main__.py"}
    found = {p: _prints_or_exits(m.tree) for p, m in MODULES.items() if p not in front}
    # scorecli.run(out="-") writes the JSON lines the caller asked for to standard output: data, not a message.
    found["runner.py"] = [line for line in found["runner.py"] if not line.endswith(": sys.stdout")]
    assert {p: lines for p, lines in found.items() if lines} == {}


def test_the_checks_see_what_they_check():
    # The readers above find what is there: cli.py's typer, engine/scorer.py's torch, its lazy import of transformers,
    # a function-level import of another module, and a TYPE_CHECKING import left out.
    assert "typer" in MODULES["cli.py"].libraries and {"torch", "transformers"} <= MODULES["engine/scorer.py"].libraries
    assert (
        "executors/session.py" in MODULES["executors/scaleout.py"].scorecli
        and "engine/scorer.py" in MODULES["executors/session.py"].scorecli
    )
    assert "data/scores.py" not in MODULES["analysis/summary.py"].scorecli
    assert _prints_or_exits(ast.parse("import sys\nprint(1)\nsys.stderr.write('x')\n")) == [
        "line 2: print()",
        "line 3: sys.stderr",
    ]
    assert "engine/stats.py" in LAYER_OF and LAYERS["engine"][1] == {"torch", "transformers"}


def test_no_module_imports_another_modules_private_names():
    assert {p: sorted(m.private) for p, m in MODULES.items() if m.private} == {}


def test_the_cli_defines_no_class_but_its_error_renderer():
    classes = [node.name for node in MODULES["cli.py"].tree.body if isinstance(node, ast.ClassDef)]
    assert len(classes) == 1 and re.search(r"Error", classes[0]), classes


def _either(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def must_not_import(layer: str) -> str:
    """The sentence that ends the docstring of each module of a layer, as the page's layers table says it."""
    inner, heavy = LAYERS[layer]
    layers = [f"the {other}" for other in LAYERS if other not in inner]
    libraries = [lib for lib in HEAVY if lib not in heavy]
    return f"Layer: {layer}. It must not import {_either(layers)} of scorecli, nor {_either(libraries)}."


@pytest.mark.parametrize("path", [p for p in MODULES if "/" in p])
def test_each_module_of_a_layer_folder_says_what_it_must_not_import(path):
    layer = LAYER_OF[path]
    assert LAYER_OF.get(f"{path.split('/')[0]}/__init__.py") == layer, f"{path} is not in its folder's layer"
    docstring = " ".join((ast.get_docstring(MODULES[path].tree) or "").split())
    assert must_not_import(layer) in docstring, f"{path}'s docstring does not end with its layer's rule"


def test_the_front_is_the_top_level_and_every_other_layer_a_folder():
    folders = {path.split("/")[0]: LAYER_OF[path] for path in MODULES if "/" in path}
    top = {LAYER_OF[path] for path in MODULES if "/" not in path}
    assert top == {"front"} and sorted(set(folders.values())) == sorted(set(LAYERS) - {"front"})
    assert all("Layer: front." in (ast.get_docstring(MODULES[path].tree) or "") for path in MODULES if "/" not in path)
