"""Architecture figures: module and function sizes, import circles, modules loaded.

    python benchmarks/architecture.py

Circles are counted on grimp's import graph of ``seqatlas`` (function-level imports
included, ``TYPE_CHECKING`` imports excluded): the strongly connected components of more
than one module, and the module pairs that import each other.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "seqatlas"


def sizes() -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    modules, functions = [], []
    for path in sorted(ROOT.rglob("*.py")):
        text = path.read_text()
        name = str(path.relative_to(ROOT.parent))
        modules.append((len(text.splitlines()), name))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append((node.end_lineno - node.lineno + 1, f"{name}:{node.name}"))
    return sorted(modules, reverse=True), sorted(functions, reverse=True)


def circles() -> tuple[list[list[str]], list[tuple[str, str]]]:
    import grimp

    graph = grimp.build_graph("seqatlas", exclude_type_checking_imports=True)
    modules = sorted(graph.modules)
    edges = {m: graph.find_modules_directly_imported_by(m) for m in modules}
    index, low, stack, on_stack, components, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    sys.setrecursionlimit(10000)
    for m in modules:
        if m not in index:
            visit(m)
    pairs = sorted({tuple(sorted((a, b))) for a in modules for b in edges[a]
                    if a in edges.get(b, ())})
    return components, pairs


def loaded(statement: str) -> int:
    code = (f"import sys\n{statement}\n"
            "print(len([m for m in sys.modules if m.split('.')[0] == 'seqatlas']))")
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True).stdout.split()[-1])


def main() -> None:
    modules, functions = sizes()
    print(f"modules: {len(modules)}, lines: {sum(n for n, _ in modules)}, "
          f"median module: {sorted(n for n, _ in modules)[len(modules) // 2]}")
    print("largest modules:", ", ".join(f"{name} {n}" for n, name in modules[:5]))
    print("longest functions:", ", ".join(f"{name} {n}" for n, name in functions[:8]))
    print("functions over 60 lines:", sum(1 for n, _ in functions if n > 60))
    components, pairs = circles()
    print(f"import circles: {len(components)} strongly connected group(s) covering "
          f"{sum(map(len, components))} modules; {len(pairs)} mutual pair(s)")
    for component in components:
        print("  ", " <-> ".join(component))
    cli = ("from typer.testing import CliRunner\nfrom seqatlas.cli.main import app\n"
           "CliRunner().invoke(app, ['--help'])")
    for statement in ("import seqatlas", "import seqatlas.query", cli):
        label = "seqatlas --help" if statement == cli else statement
        print(f"seqatlas modules loaded by `{label}`: {loaded(statement)}")


if __name__ == "__main__":
    main()
