"""tfopt's import graph, read from the source (every `import` statement,
those inside functions included, and `importlib.import_module` of a
literal), and the layer each module belongs to."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "tfopt"

# The layers, lowest first: a module imports only its own layer or lower.
LAYERS = ("core", "keras", "front", "job")
# The old module paths, kept for one release: each aliases a `job` module.
ALIASES = ("tfopt.config", "tfopt.flags", "tfopt.pipeline", "tfopt.report")


def modules():
    """{dotted name: path} of every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def layer(name):
    """The layer of module `name` (None for the package itself)."""
    parts = name.split(".")
    if len(parts) == 1:
        return None
    if parts[1] == "core":
        return "core"
    if parts[1] in ("keras2", "keras3"):
        return "keras"
    if parts[1] == "job" or name in ALIASES:
        return "job"
    return "front"


def _target(name, known):
    while name not in known and "." in name:
        name = name.rsplit(".", 1)[0]
    return name if name in known else None


def edges():
    """{module: {modules it imports}} within the package."""
    known = modules()
    graph = {}
    for name, path in known.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [f"{node.module}.{a.name}" for a in node.names]
            elif (
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", None) == "import_module"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                targets = [node.args[0].value]
            for target in targets:
                if target.split(".")[0] == "tfopt":
                    module = _target(target, known)
                    if module not in (None, name, "tfopt"):
                        found.add(module)
        graph[name] = found
    return graph


def cycles(graph):
    """The strongly connected components of more than one module."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def longest_chain(graph):
    """The most modules on one import path (the graph must have no cycles)."""
    depth = {}

    def visit(node):
        if node not in depth:
            depth[node] = 1 + max((visit(o) for o in graph[node]), default=0)
        return depth[node]

    return max(visit(node) for node in graph)


def upward(graph):
    """(importer, imported) pairs where a module imports a higher layer, or
    one Keras's package imports the other's."""
    order = {name: i for i, name in enumerate(LAYERS)}
    found = []
    for name, targets in graph.items():
        mine = layer(name)
        for target in targets:
            theirs = layer(target)
            if mine is None or theirs is None:
                continue
            if order[theirs] > order[mine]:
                found.append((name, target))
            elif mine == theirs == "keras" and (
                name.split(".")[1] != target.split(".")[1]
            ):
                found.append((name, target))
    return sorted(found)


def external(name):
    """The top-level packages outside tfopt that module `name` imports."""
    tree = ast.parse(modules()[name].read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found - {"tfopt"}
