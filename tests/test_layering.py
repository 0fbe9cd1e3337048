"""Imports run one way: no cycles, no forbidden edges between layers, deferred imports only where they keep a
heavy dependency out of an import (docs/architecture.md).

The package is read from its sources (tests/import_graph.py), deferred imports (inside functions) included.
The lists below are today's violations, to shrink to empty: a new violation fails, and so does one that is gone
from the code but still listed (remove it, so it cannot come back unnoticed).
"""
import collections
import os
import textwrap

import pytest

from import_graph import read_graph

# The layers, bottom up. A module's layer is its sub-package under lowbit (``lowbit.compiler.layout`` ->
# compiler); lowbit's own modules are the top: the CLI (cli, commands/), the benchmark and peer code (bench,
# peers, peers_ggml) and the public API (lowbit/__init__) with its helpers.
BELOW_CLI = ("compiler", "schedules", "frontends", "runtime")
CLI = ("lowbit.cli", "lowbit.__main__", "lowbit.commands")
BENCHMARK_AND_PEERS = ("lowbit.bench", "lowbit.peers", "lowbit.peers_ggml")
# What a deferred import may keep out of an import: packages that are optional, or slow to load (TVM's
# compiler, onnxruntime, onnx), or both.
HEAVY = frozenset({"tvm", "torch", "transformers", "onnxscript", "onnxruntime", "onnx", "matplotlib", "xgboost",
                   "tornado", "ggml", "gguf", "tokenizers"})

ALLOWED_CYCLES = []

ALLOWED_FORBIDDEN_EDGES = []

# Deferred imports of lowbit modules that keep nothing heavy out (the importer loads the same heavy packages
# anyway, or the imported module loads none): most dodge an import cycle. Counts per importing module.
ALLOWED_UNNEEDED_DEFERRED = {
    "lowbit.bench": 3, "lowbit.bundle": 6, "lowbit.commands.bench": 1, "lowbit.commands.bundle_runtime": 1,
    "lowbit.commands.compile": 2, "lowbit.commands.decoder": 3, "lowbit.commands.demo": 5,
    "lowbit.commands.inspect": 2, "lowbit.commands.measure": 4, "lowbit.commands.quality": 10,
    "lowbit.commands.quantize": 5, "lowbit.commands.run": 6, "lowbit.commands.tune": 2,
    "lowbit.compiler.formats": 1, "lowbit.compiler.graph": 1, "lowbit.compiler.higgs": 1,
    "lowbit.compiler.kernels_rotate": 1, "lowbit.compiler.quality": 3,
    "lowbit.decoder": 1, "lowbit.frontends.onnx": 1,
    "lowbit.frontends.onnx_patterns": 1,
    "lowbit.frontends.torch_export": 1, "lowbit.frontends.torch_onnx": 2,
    "lowbit.gpu_cases": 8, "lowbit.peers_ggml": 2, "lowbit.runtime.artifact": 1,
    "lowbit.runtime.measure": 1, "lowbit.schedules.tuning.cost_model": 3, "lowbit.schedules.tuning.offline": 1,
    "lowbit.schedules.tuning.records": 2, "lowbit.schedules.tuning.remote": 1,
    "lowbit.schedules.tuning.tuner": 17,
}

GRAPH = read_graph()


def layer(module):
    """``compiler``, ``schedules``, ``frontends``, ``runtime``, or ``lowbit`` for the modules of lowbit/."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or parts[1:] and parts[1] in BELOW_CLI else "lowbit"


def _within(module, prefixes):
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def forbidden(importer, imported):
    """Why the edge ``importer -> imported`` breaks the layering (a phrase), or None."""
    below, above = layer(importer), layer(imported)
    if below == "compiler" and above == "frontends":
        return "compiler imports frontends"
    if below == "runtime" and above in ("compiler", "schedules", "frontends"):
        return "runtime imports the compiler"
    if _within(imported, CLI) and not _within(importer, CLI):
        return "imports the CLI"
    if below in BELOW_CLI and _within(imported, BENCHMARK_AND_PEERS):
        return "below the CLI imports the benchmark or peer code"
    return None


def forbidden_edges(graph):
    return sorted({(e.importer, e.imported, reason) for e in graph.edges
                   if (reason := forbidden(e.importer, e.imported)) is not None})


def unneeded_deferred(graph):
    """Importer -> its deferred lowbit imports that keep no :data:`HEAVY` package out of importing it."""
    counts = collections.Counter()
    for edge in graph.edges:
        if not edge.deferred:
            continue
        loaded, packages = graph.loads(edge.importer)
        _, theirs = graph.loads(edge.imported)
        if edge.imported in loaded or not (theirs - packages) & HEAVY:
            counts[edge.importer] += 1
    return dict(counts)


def _difference(found, allowed, what):
    new, gone = sorted(set(found) - set(allowed)), sorted(set(allowed) - set(found))
    lines = [f"new {what}: {item}" for item in new] + \
        [f"{what} gone from the code: remove it from the list in tests/test_layering.py: {item}" for item in gone]
    return "\n".join(lines)


def test_no_new_import_cycle():
    found = GRAPH.cycles()
    assert found == sorted(ALLOWED_CYCLES), _difference(found, ALLOWED_CYCLES, "import cycle")


def test_no_new_forbidden_edge():
    found = forbidden_edges(GRAPH)
    assert found == sorted(ALLOWED_FORBIDDEN_EDGES), _difference(found, ALLOWED_FORBIDDEN_EDGES, "forbidden edge")


def test_deferred_imports_only_keep_heavy_packages_out():
    found = unneeded_deferred(GRAPH)
    changed = {m: (found.get(m, 0), ALLOWED_UNNEEDED_DEFERRED.get(m, 0))
               for m in set(found) | set(ALLOWED_UNNEEDED_DEFERRED)
               if found.get(m, 0) != ALLOWED_UNNEEDED_DEFERRED.get(m, 0)}
    assert not changed, "deferred lowbit imports that keep nothing heavy out, (found, listed) per module: " + \
        ", ".join(f"{m}: {counts}" for m, counts in sorted(changed.items())) + \
        " (import at the top instead; lower the count in tests/test_layering.py when one goes)"


def test_import_lowbit_loads_nothing_heavy():
    """``import lowbit`` (the public API) stays light: the runtime-only import and ``lowbit --help`` rely on it."""
    _, packages = GRAPH.loads("lowbit")
    assert not packages & HEAVY, sorted(packages & HEAVY)


def _package(tmp_path, files):
    (tmp_path / "pyproject.toml").write_text(textwrap.dedent("""
        [tool.setuptools.package-dir]
        "lowbit" = "lowbit"
        "lowbit.compiler" = "compiler"
        "lowbit.runtime" = "runtime"
    """))
    for path, text in files.items():
        os.makedirs(tmp_path / os.path.dirname(path), exist_ok=True)
        (tmp_path / path).write_text(textwrap.dedent(text))
    return read_graph(str(tmp_path))


def test_the_walker_sees_deferred_cycles_and_forbidden_edges(tmp_path):
    """The checks above can fail: a cycle through a deferred import, a runtime module importing the compiler, and
    a deferred import that keeps nothing heavy out are all found in a small package."""
    graph = _package(tmp_path, {
        "lowbit/__init__.py": "",
        "compiler/__init__.py": "",
        "compiler/a.py": "from lowbit.compiler import b\nimport numpy\n",
        "compiler/b.py": "def f():\n    from lowbit.compiler.a import g\n",
        "compiler/heavy.py": "import tvm\n",
        "compiler/light.py": "def f():\n    from lowbit.compiler import heavy\n",
        "runtime/__init__.py": "",
        "runtime/module.py": "from lowbit.compiler.a import g\n",
    })
    assert graph.cycles() == [("lowbit.compiler.a", "lowbit.compiler.b")]
    assert forbidden_edges(graph) == [("lowbit.runtime.module", "lowbit.compiler.a", "runtime imports the compiler")]
    assert unneeded_deferred(graph) == {"lowbit.compiler.b": 1}  # light.py's keeps tvm out: needed
    assert graph.loads("lowbit.runtime.module")[1] == {"numpy"}


@pytest.mark.parametrize("module", sorted(BELOW_CLI))
def test_every_layer_has_modules(module):
    """The package map is read (a renamed folder would otherwise make every check above pass vacuously)."""
    assert any(layer(m) == module for m in GRAPH.modules)
