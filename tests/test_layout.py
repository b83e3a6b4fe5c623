"""The code's layout keeps its layers: no import cycles, counting the imports hidden inside
functions, no lower layer reaching up, training code and test helpers where the runtime and
bench/ can tell them apart, and no browser script over 400 lines."""

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.any_database

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("generator", "sdsite")

# Lower layers and what they must never import (prefix match on dotted names).
FORBIDDEN = {
    "generator.pipelines": (
        "generator.web",
        "generator.dialects",
        "generator.worker",
        "generator.services",
        "generator.loras",
        "generator.training",
    ),
    "generator.worker": ("generator.web", "generator.dialects", "generator.training"),
    "generator.services": ("generator.web", "generator.dialects", "generator.worker"),
}

# Nothing the web or the worker runs at runtime imports the training package.
RUNTIME = (
    "generator.web",
    "generator.dialects",
    "generator.worker",
    "generator.pipelines",
    "sdsite",
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_names(path: Path, name: str) -> set[str]:
    """Every module `path` imports, at module level or inside a function, resolved to a dotted
    name; `from x import y` counts as importing x.y when that is a module, else x."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                if node.module:
                    base.append(node.module)
                source = ".".join(base)
            else:
                source = node.module
            found.add(source)
            found.update(f"{source}.{alias.name}" for alias in node.names)
    return found


def source_modules(*packages: str) -> dict[str, Path]:
    modules = {}
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" not in path.parts:
                modules[module_name(path)] = path
    return modules


def import_graph(*packages: str) -> dict[str, set[str]]:
    modules = source_modules(*packages)
    return {
        name: {other for other in imported_names(path, name) if other in modules and other != name}
        for name, path in modules.items()
    }


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path that returns to its start, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for other in sorted(graph[node]):
            # A package imported by its own module is the package's __init__, which Python has
            # already started running: that is not a cycle between layers.
            if within(node, other):
                continue
            if state.get(other) == 1:
                return stack[stack.index(other) :] + [other]
            if other not in state:
                cycle = visit(other)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_import_graph_of_generator_and_sdsite_has_no_cycle_even_through_function_imports():
    assert find_cycle(import_graph(*PACKAGES)) is None


def test_the_cycle_finder_sees_a_cycle_hidden_in_a_function(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    source = tmp_path / "b.py"
    source.write_text("def late():\n    from .c import thing\n    import a\n")
    assert {"pkg.c", "pkg.c.thing", "a"} == imported_names(source, "pkg.b")


@pytest.mark.parametrize("lower", sorted(FORBIDDEN))
def test_a_lower_layer_imports_nothing_from_the_layers_above_it(lower):
    graph = import_graph(*PACKAGES)
    reaching_up = sorted(
        f"{name} -> {other}"
        for name, others in graph.items()
        if within(name, lower)
        for other in others
        if any(within(other, upper) for upper in FORBIDDEN[lower])
    )
    assert reaching_up == []


def test_nothing_the_web_or_the_worker_runs_imports_the_training_code():
    graph = import_graph(*PACKAGES)
    assert (ROOT / "generator" / "training").is_dir()
    assert not (ROOT / "generator" / "pipelines" / "demo" / "train.py").exists()
    reaching = sorted(
        f"{name} -> {other}"
        for name, others in graph.items()
        if any(within(name, runtime) for runtime in RUNTIME)
        for other in others
        if within(other, "generator.training")
    )
    assert reaching == []


def test_web_only_modules_live_in_generator_web():
    for name in ("limits", "operations", "step_chart"):
        assert not (ROOT / "generator" / f"{name}.py").exists()
        assert (ROOT / "generator" / "web" / f"{name}.py").exists()


def test_bench_imports_nothing_from_tests_except_tests_support():
    offending = sorted(
        f"{path.name}: {name}"
        for path in sorted((ROOT / "bench").rglob("*.py"))
        for name in imported_names(path, module_name(path))
        if within(name, "tests") and not within(name, "tests.support")
    )
    assert offending == []


def test_no_browser_script_is_over_400_lines_and_each_page_loads_them_as_modules():
    scripts = sorted((ROOT / "static" / "js").rglob("*.js"))
    assert {path.name: len(path.read_text().splitlines()) > 400 for path in scripts} == {
        path.name: False for path in scripts
    }
    for template in ("generator/index.html", "generator/ops.html"):
        text = (ROOT / "templates" / template).read_text()
        assert '<script type="module"' in text, template


def test_the_service_layer_holds_commands_and_the_web_its_serializers_and_readiness():
    def defined(path: Path) -> set[str]:
        tree = ast.parse(path.read_text())
        return {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}

    web_side = {"session_as_dict", "own_queue", "readiness_problem"}
    assert defined(ROOT / "generator" / "services.py") & web_side == set()
    serializers = defined(ROOT / "generator" / "web" / "serializers.py")
    assert {"session_as_dict", "own_queue"} <= serializers
    assert "readiness_problem" in defined(ROOT / "generator" / "web" / "readiness.py")
