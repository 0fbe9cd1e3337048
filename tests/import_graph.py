"""The import graph of the ``lowbit`` package, read from its sources (nothing is imported).

Modules are the ``.py`` files of the packages that pyproject.toml maps (``lowbit.compiler`` is ``compiler/``...).
An edge is one imported lowbit module per name imported, with its line and whether it is *deferred* (inside a
function: it runs when the function is called, not when the module is imported). ``from lowbit.x import y``
is an edge to ``lowbit.x.y`` when that is a module, else to ``lowbit.x``.
"""
import ast
import collections
import dataclasses
import os
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Edge:
    """``importer`` imports ``imported`` (both module names) at ``line``; ``deferred``: inside a function."""

    importer: str
    imported: str
    line: int
    deferred: bool


@dataclasses.dataclass
class ImportGraph:
    """Modules (name -> path), their lowbit-internal edges and their external imports (top-level names)."""

    modules: dict
    edges: list
    external: dict  # module -> {(top-level package name, deferred)}

    def targets(self, module, deferred=None):
        """The lowbit modules ``module`` imports (only deferred / only top-level ones with ``deferred``)."""
        return {e.imported for e in self.edges
                if e.importer == module and (deferred is None or e.deferred == deferred)}

    def cycles(self):
        """Each set of two or more modules that import one another, directly or not (strongly connected
        components, deferred imports included), as sorted tuples."""
        graph = {m: self.targets(m) - {m} for m in self.modules}
        return sorted(tuple(sorted(c)) for c in _components(graph) if len(c) > 1)

    def loads(self, module):
        """Every lowbit module and external package that importing ``module`` loads (top-level imports only,
        transitively; a package's ``__init__`` counts for its submodules)."""
        seen, stack, packages = set(), [module], set()
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            packages |= {name for name, deferred in self.external.get(current, ()) if not deferred}
            parents = [p for p in _parents(current) if p in self.modules]
            stack += list(self.targets(current, deferred=False)) + parents
        return seen, packages


def _parents(module):
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _components(graph):
    """Tarjan's strongly connected components, iteratively (no recursion limit)."""
    index, low, on_stack, stack, result, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                result.append(component)
    return result


def package_modules(root=ROOT):
    """Module name -> source path, for every package pyproject.toml maps."""
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        folders = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    modules = {}
    for package, folder in folders.items():
        for name in sorted(os.listdir(os.path.join(root, folder))):
            if name.endswith(".py"):
                modules[package if name == "__init__.py" else f"{package}.{name[:-3]}"] = \
                    os.path.join(root, folder, name)
    return modules


def read_graph(root=ROOT):
    """The :class:`ImportGraph` of the package under ``root``."""
    modules = package_modules(root)
    edges, external = [], collections.defaultdict(set)
    for module, path in modules.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
        for node, deferred in _imports(tree):
            for name in _imported_names(node, package):
                if name.split(".")[0] == "lowbit":
                    edges.append(Edge(module, _resolve(name, modules), node.lineno, deferred))
                else:
                    external[module].add((name.split(".")[0], deferred))
    return ImportGraph(modules, edges, dict(external))


def _imports(tree):
    """(Import / ImportFrom node, deferred) for every import statement of a module."""
    work = [(tree, False)]
    while work:
        node, deferred = work.pop()
        for child in ast.iter_child_nodes(node):
            inner = deferred or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, inner
            work.append((child, inner))


def _imported_names(node, package):
    """Dotted names an import statement imports: ``import a.b`` -> a.b; ``from a import b, c`` -> a.b, a.c."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: from the importer's package, one level up per extra dot
        anchor = package
        for _ in range(node.level - 1):
            anchor = anchor.rpartition(".")[0]
        base = f"{anchor}.{base}" if base else anchor
    if base.split(".")[0] != "lowbit":
        return [base]
    return [f"{base}.{alias.name}" for alias in node.names]


def _resolve(name, modules):
    """The module a dotted lowbit name is in (``lowbit.compiler.layout.relayout`` -> ``lowbit.compiler.layout``)."""
    while name not in modules and "." in name:
        name = name.rpartition(".")[0]
    return name
