"""The code's structure in numbers: import graph, circles, largest files, hand-kept op lists, duplicates.

    python benchmarks/structure_report.py [--repo DIR] [--json PATH]

Run it on any checkout (``git worktree add /tmp/old REV`` for an older commit) to compare a
redesign's before and after. What each figure counts:

- **Nodes**: the Python modules of ``labfast/``, except that each of the folders ``data/``,
  ``model/``, ``ops/``, ``kernels/``, ``csrc/`` (the CUDA extension ``labfast._cuda``) and
  ``benchmarks/`` counts as one node; tests are left out. ``__init__`` modules fold into their package.
- **Imports**: edges between two nodes from ``import`` statements, counted once per pair of nodes.
  ``module-level`` counts only statements at the top of a module (inside ``if``/``try`` too);
  ``all`` adds the imports inside functions, which import-linter (``lint-imports``) checks too.
- **Circles between single modules**: the same, over all imports between modules, with no folder
  folded (a circle inside ``ops/`` shows here).
- **Levels**: the number of nodes on the longest chain of imports, after each circle is folded into
  one node. **Circles**: the strongly connected groups of more than one node.
- **Largest files**: lines of the largest ``.py`` files of ``labfast/`` and ``kernels/``.
- **Op lists**: the non-test files holding a hand-written collection (tuple, list, set or dict keys)
  of two or more op names — each is a place that must change when an op is added.
- **Duplicated pairs**: what the ``duplicates`` command (where installed) counts over ``labfast/``,
  ``kernels/`` and ``benchmarks/``.
"""
from __future__ import annotations

import argparse
import ast
import json
import shutil
import subprocess
from pathlib import Path

FOLDED = ("data", "model", "ops", "kernels")
OP_NAMES = {"input_fusion", "heatmap_feature_concat", "feature_fusion", "message_passing", "boundary_heatmaps",
            "batch_norm_act", "batch_norm_statistics"}


def node_of(module: str) -> str | None:
    """The graph node of a dotted module name, or None for modules outside the project."""
    parts = module.split(".")
    if parts[0] == "kernels":
        return "kernels"
    if parts[0] == "benchmarks":
        return "benchmarks"
    if parts[0] != "labfast":
        return None
    if len(parts) > 1 and parts[1] in FOLDED:
        return parts[1]
    if len(parts) > 1 and parts[1] == "_cuda":
        return "csrc"
    return ".".join(parts[1:]) or "labfast"


def module_name(path: Path, repo: Path) -> str:
    relative = path.relative_to(repo).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files(repo: Path) -> list[Path]:
    files = [*sorted((repo / "labfast").rglob("*.py")), *sorted((repo / "kernels").glob("*.py")),
             *sorted((repo / "benchmarks").rglob("*.py"))]
    return [path for path in files if "__pycache__" not in path.parts]


def imported_modules(tree: ast.Module, module: str, is_package: bool, known: set[str]) -> tuple[set[str], set[str]]:
    """(module-level, inside functions) imported dotted names. ``from a import b`` is an import of
    the module ``a.b`` where that is a module, else of ``a`` (as import-linter reads it)."""
    top, nested = set(), set()
    top_level = {id(node) for node in _top_level_statements(tree.body)}
    for node in ast.walk(tree):
        names = set()
        if isinstance(node, ast.Import):
            names = {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_relative(node, module, is_package)
            names = {f"{base}.{alias.name}" if _unfolded(f"{base}.{alias.name}") in known else base
                     for alias in node.names}
        (top if id(node) in top_level else nested).update(names)
    return top, nested


def _top_level_statements(body):
    for node in body:
        yield node
        if isinstance(node, (ast.If, ast.Try)):
            for block in (node.body, node.orelse, getattr(node, "finalbody", []),
                          *[handler.body for handler in getattr(node, "handlers", [])]):
                yield from _top_level_statements(block)


def _resolve_relative(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    package = package[:len(package) - node.level + 1]
    return ".".join(package + ([node.module] if node.module else []))


def import_graph(repo: Path) -> dict[str, dict[str, set[str]]]:
    """``{"module-level": {node: {imported nodes}}, "all": {...}, "modules": {...}}``: the folded graph of
    module-level imports, of all imports, and of all imports between modules with no folding."""
    graphs = {"module-level": {}, "all": {}, "modules": {}}
    known = {_unfolded(module_name(path, repo)) for path in source_files(repo)} | {"labfast._cuda"}
    for path in source_files(repo):
        module = module_name(path, repo)
        source = node_of(module)
        top, nested = imported_modules(ast.parse(path.read_text()), module, path.name == "__init__.py", known)
        for graph, names in (("module-level", top), ("all", top | nested)):
            edges = graphs[graph].setdefault(source, set())
            for name in names:
                if name.startswith("labfast.kernels"):
                    name = "kernels" + name[len("labfast.kernels"):]
                if name in known or name.startswith(("labfast", "kernels")):  # kernels: labfast.kernels
                    target = node_of(name)
                    if target and target != source and (name in known or _is_package_of(name, known)):
                        edges.add(target)
        if graph == "all":
            graphs["modules"][_unfolded(module)] = {_unfolded(name) for name in top | nested if name in known} - {_unfolded(module)}
    return graphs


def _unfolded(module: str) -> str:
    return "kernels" + module[len("labfast.kernels"):] if module.startswith("labfast.kernels") else module


def _is_package_of(name: str, known: set[str]) -> bool:
    return any(module.startswith(name + ".") for module in known)


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    for node in sorted(set(graph) | {t for targets in graph.values() for t in targets}):
        if node not in index:
            visit(node)
    return found


def levels(graph: dict[str, set[str]]) -> int:
    """Nodes on the longest import chain, each circle folded into one node."""
    group = {}
    for component in circles(graph):
        for member in component:
            group[member] = component[0]
    folded = {}
    for node, targets in graph.items():
        folded.setdefault(group.get(node, node), set()).update(
            group.get(target, target) for target in targets if group.get(target, target) != group.get(node, node))
    depth = {}

    def chain(node):
        if node not in depth:
            depth[node] = 1 + max((chain(target) for target in folded.get(node, ())), default=0)
        return depth[node]

    return max((chain(node) for node in folded), default=0)


def op_list_files(repo: Path) -> list[str]:
    found = []
    for path in source_files(repo):
        if path.resolve() == Path(__file__).resolve():
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            items = node.keys if isinstance(node, ast.Dict) else getattr(node, "elts", None)
            if not isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)) or items is None:
                continue
            names = {item.value for item in items if isinstance(item, ast.Constant) and item.value in OP_NAMES}
            if len(names) >= 2:
                found.append(str(path.relative_to(repo)))
                break
    return found


def duplicated_pairs(repo: Path) -> str:
    if shutil.which("duplicates") is None:
        return "not measured (no duplicates command)"
    counts = []
    for folder in ("labfast", "kernels", "benchmarks"):
        output = subprocess.run(["duplicates", "--repo", str(repo / folder), "--most", "1", "--seconds", "120"],
                                capture_output=True, text=True).stdout
        counts.append(f"{folder}: {output.splitlines()[0] if output else '?'}")
    return "; ".join(counts)


def report(repo: Path) -> dict:
    graphs = import_graph(repo)
    largest = sorted(((len(path.read_text().splitlines()), str(path.relative_to(repo)))
                      for path in source_files(repo) if path.parts[len(repo.parts)] in ("labfast", "kernels")),
                     reverse=True)[:8]
    summary = {"nodes": len(graphs["all"]), "module_circles": circles(graphs.pop("modules"))}
    for name, graph in graphs.items():
        summary[name] = {"imports": sum(len(targets) for targets in graph.values()), "levels": levels(graph),
                         "circles": circles(graph)}
    summary["largest_files"] = [{"lines": lines, "file": file} for lines, file in largest]
    summary["op_list_files"] = op_list_files(repo)
    summary["duplicated_pairs"] = duplicated_pairs(repo)
    return summary


def format_report(summary: dict) -> str:
    lines = [f"nodes: {summary['nodes']}"]
    for name in ("module-level", "all"):
        graph = summary[name]
        lines.append(f"{name} imports: {graph['imports']} on {graph['levels']} levels, {len(graph['circles'])} circles"
                     + "".join(f"\n  circle: {' <-> '.join(component)}" for component in graph["circles"]))
    lines.append(f"circles between single modules (folders unfolded): {len(summary['module_circles'])}"
                 + "".join(f"\n  circle: {' <-> '.join(component)}" for component in summary["module_circles"]))
    lines.append("largest files: " + ", ".join(f"{row['file']} {row['lines']}" for row in summary["largest_files"]))
    lines.append(f"files with a hand-kept op list: {len(summary['op_list_files'])} "
                 f"({', '.join(summary['op_list_files'])})")
    lines.append(f"duplicated code pairs: {summary['duplicated_pairs']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]), help="checkout to measure")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    summary = report(Path(args.repo).resolve())
    print(format_report(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
