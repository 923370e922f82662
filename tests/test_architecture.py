"""The package keeps its shape: no import cycle, and no import arrow pointing up (docs/architecture.md).

The imports are read from the source with ``ast``, never by importing: every
``import`` and ``from ... import`` at module level, inside functions and
methods (a lazy import hides a circle, it does not remove it) and under
``if TYPE_CHECKING:``. Relative imports are resolved to full module names;
``from pkg import name`` is an arrow to ``pkg`` and, when ``pkg.name`` is a
module, to ``pkg.name`` as well. One exception: ``from . import sub`` (or
``from fastipc import sub``) naming only submodules of a package the importer
lives in is an arrow to the submodules alone, since Python has already begun
that package before it runs anything inside it.

Imports under ``if TYPE_CHECKING:`` never run, so the cycle check leaves them
out; the forbidden-arrow checks count them (a type-only arrow up is still an
arrow up: annotate against ``fastipc._contract`` instead).

A forbidden arrow is looked for along every path, not only a direct import:
a backend that imports ``endpoints``, which imports ``ring``, reaches the
public ring all the same. The message gives the path.
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

PACKAGE = "fastipc"


# --------------------------------------------------------------------------
# Reading the imports.


@dataclass(frozen=True)
class Arrow:
    """One import: ``source`` imports ``target`` at ``line``; ``typing_only`` under TYPE_CHECKING."""

    target: str
    line: int = 0
    typing_only: bool = False


#: module name -> the arrows out of it (only arrows to modules of the package).
Graph = Mapping[str, Sequence[Arrow]]


def package_dir() -> Path:
    """The directory of the fastipc being tested (src/ or site-packages), found without importing it."""
    spec = importlib.util.find_spec(PACKAGE)
    assert spec is not None and spec.submodule_search_locations, f"{PACKAGE} is not importable"
    return Path(next(iter(spec.submodule_search_locations)))


def module_files(root: Path) -> dict[str, Path]:
    """Every Python module of the package by full name (a package by its ``__init__.py``)."""
    modules: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        parts = [PACKAGE, *rel.parts]
        if parts[-1] == "__init__":
            parts.pop()
        if any(not p.isidentifier() for p in parts):
            continue  # not importable (a stray script or a copy with a dash in its name)
        modules[".".join(parts)] = path
    return modules


def extension_modules(root: Path) -> set[str]:
    """Compiled modules (``_native.abi3.so``): leaves, but modules all the same."""
    names = set()
    for path in root.rglob("*.so"):
        rel = path.relative_to(root)
        stem = rel.name.split(".", 1)[0]
        names.add(".".join([PACKAGE, *rel.parent.parts, stem]))
    return names


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    if isinstance(test, ast.Attribute):
        return test.attr == "TYPE_CHECKING"
    return False


def _walk_imports(tree: ast.AST) -> Iterable[tuple[ast.stmt, bool]]:
    """Every Import/ImportFrom in the tree, anywhere, with whether it sits under TYPE_CHECKING."""
    stack: list[tuple[ast.AST, bool]] = [(tree, False)]
    while stack:
        node, typing_only = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, typing_only
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend((child, True) for child in node.body)
            stack.extend((child, typing_only) for child in node.orelse)
            continue
        stack.extend((child, typing_only) for child in ast.iter_child_nodes(node))


def _resolve_from(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute module name of ``from <level dots><name> import ...`` written in ``module``."""
    if level == 0:
        return name or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]  # a plain module's relative imports start at its package
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def arrows_of(module: str, path: Path, modules: set[str]) -> list[Arrow]:
    """The arrows out of one module to modules of the package, in source order."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: list[Arrow] = []
    for node, typing_only in _walk_imports(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            assert isinstance(node, ast.ImportFrom)
            base = _resolve_from(module, is_package, node.level, node.module)
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
            targets.extend(subs)
            all_submodules = len(subs) == len(node.names)
            own_package = _within(module, base) and module != base
            if not (all_submodules and own_package):
                targets.append(base)
        for target in targets:
            if _within(target, PACKAGE) and target != module:
                found.append(Arrow(target, node.lineno, typing_only))
    return sorted(found, key=lambda a: (a.line, a.target))


def read_graph(root: Path | None = None) -> dict[str, list[Arrow]]:
    """The package's import graph: every module (compiled ones as leaves) -> its arrows."""
    root = root or package_dir()
    files = module_files(root)
    modules = set(files) | extension_modules(root)
    graph: dict[str, list[Arrow]] = {name: [] for name in sorted(modules)}
    for name, path in files.items():
        graph[name] = arrows_of(name, path, modules)
    return graph


# --------------------------------------------------------------------------
# Checking it. Both checks take a plain graph, so they can be tested on made-up ones.


def _runtime_edges(graph: Graph) -> dict[str, list[str]]:
    edges = {
        m: sorted({a.target for a in arrows if not a.typing_only}) for m, arrows in graph.items()
    }
    for targets in list(edges.values()):
        for t in targets:
            edges.setdefault(t, [])
    return edges


def _components(graph: Graph) -> list[list[str]]:
    """Strongly connected components of the runtime imports, each sorted."""
    edges = _runtime_edges(graph)
    # Tarjan's strongly connected components, iteratively (no recursion limit).
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work: list[tuple[str, int]] = [(start, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            targets = edges[node]
            if i < len(targets):
                work.append((node, i + 1))
                nxt = targets[i]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])

    return components


def find_cycles(graph: Graph) -> list[list[str]]:
    """Each import circle among runtime imports, as a path that starts and ends at the same module.

    One cycle is reported per strongly connected component (the shortest one
    through its first module), so a tangle shows up once, not once per loop.
    """
    edges = _runtime_edges(graph)
    components = _components(graph)

    cycles = []
    for component in components:
        members = set(component)
        first = component[0]
        if len(component) == 1 and first not in edges[first]:
            continue
        # Shortest way from `first` back to itself inside the component (BFS).
        prev: dict[str, str] = {}
        queue = [first]
        seen = {first}
        path: list[str] = []
        while queue and not path:
            nxt_queue = []
            for node in queue:
                for t in edges[node]:
                    if t not in members:
                        continue
                    if t == first:
                        path = [first]
                        back = node
                        while back != first:
                            path.append(back)
                            back = prev[back]
                        path.append(first)
                        path.reverse()
                        break
                    if t not in seen:
                        seen.add(t)
                        prev[t] = node
                        nxt_queue.append(t)
                if path:
                    break
            queue = nxt_queue
        cycles.append(path)
    return sorted(cycles)


def tangles(graph: Graph) -> list[list[str]]:
    """The sets of modules that import each other round a circle (runtime imports only)."""
    tangled = {m for c in find_cycles(graph) for m in c}
    return [c for c in _components(graph) if c[0] in tangled]


def _matches(name: str, patterns: Iterable[str]) -> bool:
    """``fastipc.x`` matches the module and its submodules; ``fastipc.x_*`` matches by prefix."""
    for p in patterns:
        if p.endswith("*"):
            if name.startswith(p[:-1]):
                return True
        elif _within(name, p):
            return True
    return False


@dataclass(frozen=True)
class Rule:
    """Modules matching ``sources`` may not reach modules matching ``targets``.

    ``allowed(importer, target)`` exempts an arrow: a path is reported only when
    neither its start nor the module making the last hop is allowed the target.
    """

    id: str
    why: str
    sources: tuple[str, ...]
    targets: Callable[[str], bool]
    allowed: Callable[[str, str], bool] = lambda source, target: False


GROUND_FLOOR = (
    "fastipc.errors",
    "fastipc._checks",
    "fastipc._names",
    "fastipc._contract",
    "fastipc._contract_broadcast",
    "fastipc.framing",
    "fastipc.handoff",
    "fastipc._objects",
    "fastipc._turns",
)
PUBLIC_CLASSES = ("fastipc.ring", "fastipc.channel", "fastipc.broadcast")
#: The command and the benchmark, as packages or modules (bench_channel.py included).
CLI_BENCH = ("fastipc.cli", "fastipc.bench", "fastipc.bench_*")


def _exact(names: Iterable[str]) -> Callable[[str], bool]:
    names = set(names)
    return lambda target: target in names


RULES = [
    Rule(
        "backends-stay-below-public-classes-servers-transports",
        "backends implement fastipc._contract; the public classes subclass them, never the other way",
        ("fastipc.backends",),
        lambda t: (
            _matches(t, (*PUBLIC_CLASSES, "fastipc.server", "fastipc.transports"))
            # The package itself re-exports Ring and Channel: `from fastipc import X` is the same arrow.
            or t == PACKAGE
        ),
    ),
    Rule(
        "ring-never-imports-channel",
        "the ring stands alone; the channel may use it, not the reverse",
        ("fastipc.ring",),
        lambda t: _matches(t, ("fastipc.channel",)),
    ),
    Rule(
        "errors-import-nothing",
        "every module may raise fastipc's exceptions, so errors must depend on none of them",
        ("fastipc.errors",),
        lambda t: _within(t, PACKAGE),
    ),
    Rule(
        "nothing-imports-cli-or-bench",
        "the command and the benchmark sit on top: nothing in the library may need them",
        (PACKAGE,),
        lambda t: _matches(t, CLI_BENCH),
        allowed=lambda s, t: (
            _matches(s, CLI_BENCH) or (s == "fastipc.__main__" and _matches(t, ("fastipc.cli",)))
        ),
    ),
    Rule(
        "ground-floor-imports-only-ground-floor",
        "errors, _checks, _names, _contract, _turns, framing, handoff and _objects sit under everything else",
        GROUND_FLOOR,
        lambda t: _within(t, PACKAGE) and t not in GROUND_FLOOR and t != "fastipc._version",
    ),
]


def forbidden_arrows(graph: Graph, rule: Rule) -> list[str]:
    """One line per module that reaches a forbidden target, with the path (typing-only arrows count)."""
    edges = {m: arrows for m, arrows in graph.items()}
    found = []
    for source in sorted(m for m in edges if _matches(m, rule.sources)):
        # BFS, so each forbidden target is reported with the shortest path to it.
        prev: dict[str, tuple[str, Arrow]] = {}
        queue = [source]
        seen = {source}
        hits = []
        while queue:
            nxt_queue = []
            for node in queue:
                for arrow in edges.get(node, ()):
                    t = arrow.target
                    if t in seen:
                        continue
                    seen.add(t)
                    prev[t] = (node, arrow)
                    if rule.targets(t) and not (rule.allowed(source, t) or rule.allowed(node, t)):
                        hits.append(t)
                        continue  # one report per target; don't walk on through it
                    nxt_queue.append(t)
            queue = nxt_queue
        for target in hits:
            steps = []
            node = target
            while node != source:
                parent, arrow = prev[node]
                note = " (TYPE_CHECKING)" if arrow.typing_only else ""
                steps.append(
                    f"{parent}:{arrow.line} -> {node}{note}"
                    if arrow.line
                    else f"{parent} -> {node}{note}"
                )
                node = parent
            steps.reverse()
            how = "directly" if len(steps) == 1 else f"via {len(steps) - 1} other module(s)"
            found.append(f"{source} reaches {target} {how}: " + "; ".join(steps))
    return found


# --------------------------------------------------------------------------
# The tests on the real package.


@pytest.fixture(scope="module")
def graph() -> dict[str, list[Arrow]]:
    return read_graph()


def test_import_graph_is_read(graph: dict[str, list[Arrow]]) -> None:
    """The reader finds the package: a shape test that saw no imports would pass for nothing."""
    n_arrows = sum(len(a) for a in graph.values())
    assert len(graph) >= 20, f"only {len(graph)} modules found in {package_dir()}: {sorted(graph)}"
    assert n_arrows >= 40, f"only {n_arrows} import arrows found among {len(graph)} modules"
    for must in ("fastipc", "fastipc.errors", "fastipc.backends"):
        assert must in graph, f"{must} not found in {package_dir()}"
    assert any(a.target == "fastipc.errors" for arrows in graph.values() for a in arrows), (
        "nothing imports fastipc.errors: the reader is broken"
    )


def test_no_import_cycle(graph: dict[str, list[Arrow]]) -> None:
    cycles = find_cycles(graph)
    assert not cycles, (
        f"{len(cycles)} import cycle(s) among fastipc modules (TYPE_CHECKING imports left out; "
        "lazy imports inside functions count). Point the arrow down: move what both sides need "
        "to the ground floor (docs/architecture.md):\n"
        + "\n".join(_describe(c, graph) for c in cycles)
    )


def _describe(cycle: list[str], graph: Graph) -> str:
    """A cycle's path, then every module tangled with it (the whole strongly connected set)."""
    members = next(c for c in tangles(graph) if cycle[0] in c)
    line = "  " + " -> ".join(cycle)
    if len(members) > len(cycle) - 1:
        line += f"\n    ({len(members)} modules tangled together: {', '.join(members)})"
    return line


@pytest.mark.parametrize("rule", RULES, ids=[r.id for r in RULES])
def test_no_forbidden_arrow(graph: dict[str, list[Arrow]], rule: Rule) -> None:
    found = forbidden_arrows(graph, rule)
    assert not found, f"{rule.id}: {rule.why}.\n" + "\n".join("  " + line for line in found)


# --------------------------------------------------------------------------
# The checker checks: made-up graphs with known faults.


def _graph(spec: Mapping[str, Iterable[str]], typing_only: Iterable[tuple[str, str]] = ()) -> Graph:
    tc = set(typing_only)
    return {m: [Arrow(t, 1, (m, t) in tc) for t in targets] for m, targets in spec.items()}


def _rule(rule_id: str) -> Rule:
    return next(r for r in RULES if r.id == rule_id)


def test_checker_reports_a_cycle_with_its_path() -> None:
    g = _graph(
        {
            "fastipc.a": ["fastipc.b"],
            "fastipc.b": ["fastipc.c"],
            "fastipc.c": ["fastipc.a", "fastipc.errors"],
            "fastipc.errors": [],
            "fastipc.d": ["fastipc.d2"],
            "fastipc.d2": ["fastipc.d"],
        }
    )
    assert find_cycles(g) == [
        ["fastipc.a", "fastipc.b", "fastipc.c", "fastipc.a"],
        ["fastipc.d", "fastipc.d2", "fastipc.d"],
    ]


def test_checker_leaves_type_checking_imports_out_of_cycles() -> None:
    g = _graph(
        {"fastipc.a": ["fastipc.b"], "fastipc.b": ["fastipc.a"]},
        typing_only=[("fastipc.b", "fastipc.a")],
    )
    assert find_cycles(g) == []
    assert find_cycles(_graph({"fastipc.a": ["fastipc.b"], "fastipc.b": []})) == []


def test_checker_reports_forbidden_arrows_direct_indirect_and_typing_only() -> None:
    g = _graph(
        {
            "fastipc.backends.python_ring": ["fastipc.errors", "fastipc.endpoints"],
            "fastipc.backends.native_ring": ["fastipc.channel"],
            "fastipc.endpoints": ["fastipc.ring"],
            "fastipc.ring": ["fastipc.errors"],
            "fastipc.channel": [],
            "fastipc.errors": [],
        },
        typing_only=[("fastipc.backends.native_ring", "fastipc.channel")],
    )
    found = forbidden_arrows(g, _rule("backends-stay-below-public-classes-servers-transports"))
    assert len(found) == 2, found
    assert "fastipc.backends.native_ring reaches fastipc.channel directly" in found[0]
    assert "(TYPE_CHECKING)" in found[0]
    assert found[1].startswith("fastipc.backends.python_ring reaches fastipc.ring via 1")
    assert "fastipc.endpoints" in found[1]


def test_checker_rules_allow_what_they_should() -> None:
    g = _graph(
        {
            "fastipc.__main__": ["fastipc.cli"],
            "fastipc.cli": ["fastipc.bench", "fastipc.ring"],
            "fastipc.bench": ["fastipc.ring"],
            "fastipc.ring": ["fastipc.errors", "fastipc._checks"],
            "fastipc._checks": ["fastipc.errors", "fastipc._version"],
            "fastipc.errors": [],
            "fastipc.server": ["fastipc.bench_channel"],
            "fastipc.bench_channel": [],
        }
    )
    assert forbidden_arrows(g, _rule("ground-floor-imports-only-ground-floor")) == []
    assert forbidden_arrows(g, _rule("errors-import-nothing")) == []
    assert forbidden_arrows(g, _rule("ring-never-imports-channel")) == []
    cli_bench = forbidden_arrows(g, _rule("nothing-imports-cli-or-bench"))
    assert len(cli_bench) == 1 and cli_bench[0].startswith(
        "fastipc.server reaches fastipc.bench_channel"
    )
    up = _graph(
        {
            "fastipc.framing": ["fastipc.ring"],
            "fastipc.errors": ["fastipc._names"],
            "fastipc.ring": [],
            "fastipc._names": [],
        }
    )
    ground = forbidden_arrows(up, _rule("ground-floor-imports-only-ground-floor"))
    assert [line.split(":")[0] for line in ground] == [
        "fastipc.framing reaches fastipc.ring directly"
    ]
    errors = forbidden_arrows(up, _rule("errors-import-nothing"))
    assert [line.split(":")[0] for line in errors] == [
        "fastipc.errors reaches fastipc._names directly"
    ]


def test_reader_resolves_relative_lazy_and_type_checking_imports(tmp_path: Path) -> None:
    root = tmp_path / PACKAGE
    (root / "backends").mkdir(parents=True)
    (root / "__init__.py").write_text("from .ring import Ring\n")
    (root / "errors.py").write_text("")
    (root / "ring.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from . import errors\n"
        "if TYPE_CHECKING:\n"
        "    from .channel import Channel\n"
        "def f():\n"
        "    from .backends import native_ring, helper\n"
    )
    (root / "channel.py").write_text("import fastipc.ring\nfrom fastipc import Ring\n")
    (root / "backends" / "__init__.py").write_text("helper = 1\n")
    (root / "backends" / "native_ring.py").write_text(
        "from .. import errors\nfrom ..errors import Closed\nfrom . import _native\n"
    )
    (root / "backends" / "_native.abi3.so").write_bytes(b"")
    g = read_graph(root)
    got = {m: {(a.target, a.typing_only) for a in arrows} for m, arrows in g.items()}
    assert got["fastipc"] == {("fastipc.ring", False)}
    assert got["fastipc.ring"] == {
        ("fastipc.errors", False),  # from . import errors: the submodule, not the package
        ("fastipc.channel", True),
        ("fastipc.backends", False),  # `helper` is not a module: the package itself
        ("fastipc.backends.native_ring", False),
    }
    assert got["fastipc.channel"] == {("fastipc.ring", False), ("fastipc", False)}
    assert got["fastipc.backends.native_ring"] == {
        ("fastipc.errors", False),
        ("fastipc.backends._native", False),
    }
    assert got["fastipc.backends._native"] == set()
    assert find_cycles(g) == []  # ring -> channel -> fastipc -> ring only through TYPE_CHECKING
