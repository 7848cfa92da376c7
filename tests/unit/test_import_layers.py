"""The package layers of ARCHITECTURE.md ("Who may import whom"), checked on every import of the code.

Every module under components/, flows/ and align_cli/ is parsed (nothing is imported) and each of its
imports, including those inside functions, is mapped to a package: the code imports heavy libraries and
other stages lazily, and a lazy import is still a dependency, and a cycle once the other side imports back.
A new edge means editing ``ALLOWED`` and the diagram in ARCHITECTURE.md together; a test keeps them equal.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path


REPO = Path(__file__).resolve().parents[2]
ROOTS = ("components", "flows", "align_cli")

# Single modules at the bottom: every package under components/ may import them; they import only what
# their own entry in ALLOWED lists.
BASE = {"components.config", "components.storage", "components.secrets", "components.accelerators"}


def _c(*names: str) -> set[str]:
    return {f"components.{name}" for name in names}


# Package -> the other packages it may import. Mirrors ARCHITECTURE.md, "Who may import whom".
ALLOWED: dict[str, set[str]] = {
    "components": set(),  # components/__init__.py: a docstring
    "components.secrets": set(),
    "components.storage": set(),
    "components.accelerators": set(),
    "components.config": _c("accelerators"),  # the recipe's card is checked when the config loads
    "components.metrics": BASE,
    "components.figures": BASE,
    "components.runtime": BASE,
    "components.model": BASE,
    "components.data": BASE | _c("runtime"),
    "components.train": BASE | _c("data", "model", "metrics", "runtime"),
    "components.evaluation": BASE | _c("data", "model", "metrics", "figures", "runtime"),
    "components.registry": BASE | _c("evaluation", "data", "model", "runtime"),
    "components.serving": BASE | _c("registry", "model", "runtime"),
    "components.report": BASE | _c("metrics", "figures", "runtime"),
    "components.experiments": BASE | _c("figures", "runtime"),
}
COMPONENT_PACKAGES = set(ALLOWED) - {"components"}
ALLOWED["flows"] = set(COMPONENT_PACKAGES)
ALLOWED["align_cli"] = COMPONENT_PACKAGES | {"flows"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(module: str) -> str:
    """``components.<folder or top-level module>`` for the library, the top-level name otherwise."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "components" else parts[0]


def imports_of(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """``(line, imported module)`` for every import in ``source``, at any depth, relative ones resolved."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".") if is_package else module.split(".")[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module
            if base in ROOTS:  # ``from components import runtime`` imports a package of its own
                found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, base))
    return found


def edges() -> list[tuple[str, int, str, str, str]]:
    """``(file, line, from package, to package, imported module)`` for each import between two packages."""
    out = []
    for root in ROOTS:
        for path in sorted((REPO / root).rglob("*.py")):
            module = module_name(path)
            for line, target in imports_of(path.read_text(encoding="utf-8"), module, path.name == "__init__.py"):
                source_pkg, target_pkg = package_of(module), package_of(target)
                if target.split(".")[0] in ROOTS and source_pkg != target_pkg:
                    out.append((str(path.relative_to(REPO)), line, source_pkg, target_pkg, target))
    return out


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path (first node repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_the_scanner_sees_lazy_relative_and_package_imports():
    source = (
        "import os\n"
        "from components.config import AlignConfig\n"
        "def f():\n"
        "    from components.evaluation.suite import x\n"
        "    if True:\n"
        "        import components.runtime.tracking\n"
        "from components import storage\n"
        "from . import sibling\n"
        "from ..model import artifact\n"
    )
    found = imports_of(source, "components.train.validation")
    assert found == [
        (1, "os"),
        (2, "components.config"),
        (7, "components.storage"),
        (8, "components.train"),
        (9, "components.model"),
        (4, "components.evaluation.suite"),
        (6, "components.runtime.tracking"),
    ]
    assert [package_of(target) for _, target in found[1:]] == [
        "components.config", "components.storage", "components.train", "components.model",
        "components.evaluation", "components.runtime",
    ]


def test_every_package_is_in_the_table():
    packages = {package_of(module_name(p)) for root in ROOTS for p in (REPO / root).rglob("*.py")}
    assert packages - set(ALLOWED) == set(), "add the new package to ALLOWED and to ARCHITECTURE.md's diagram"
    imported = {dst for _, _, _, dst, _ in edges()}
    assert imported - set(ALLOWED) == set(), "an import names a package that does not exist"


def test_every_import_follows_the_layers():
    bad = [
        f"{file}:{line}: {src} -> {dst} (imports {target}); {src} may import only: {', '.join(sorted(ALLOWED[src])) or 'nothing'}"
        for file, line, src, dst, target in edges()
        if dst not in ALLOWED.get(src, set())
    ]
    assert not bad, "imports across layers that ARCHITECTURE.md does not allow:\n" + "\n".join(bad)


def test_components_never_imports_flows_or_the_cli():
    bad = [f"{file}:{line}: {src} -> {dst} (imports {target})" for file, line, src, dst, target in edges()
           if src.split(".")[0] == "components" and dst in ("flows", "align_cli")]
    assert not bad, "components/ must not import flows/ or align_cli/:\n" + "\n".join(bad)


def test_no_package_cycles_among_components():
    graph: dict[str, set[str]] = {}
    where: dict[tuple[str, str], str] = {}
    for file, line, src, dst, target in edges():
        if src.startswith("components") and dst.startswith("components"):
            graph.setdefault(src, set()).add(dst)
            where.setdefault((src, dst), f"{file}:{line} imports {target}")
    cycle = _cycle(graph)
    assert cycle is None, "package cycle " + " -> ".join(cycle) + ":\n" + "\n".join(
        where[a, b] for a, b in zip(cycle, cycle[1:], strict=False)
    )
    assert _cycle(ALLOWED) is None, "the allowed-imports table itself has a cycle"


def _architecture_table() -> dict[str, set[str]]:
    """The diagram in ARCHITECTURE.md's "Who may import whom" as ``{package: allowed}``.

    Each line is ``names ──▶ names``; ``x/`` and ``x.py`` name components' packages, ``components/*`` all of
    them, ``(nothing)`` and ``(base only)`` none; BASE is added to every package of components/ outside it, as the text says.
    """
    text = (REPO / "ARCHITECTURE.md").read_text(encoding="utf-8")
    section = text.split("## Who may import whom", 1)[1].split("\n## ", 1)[0]
    block = section.split("```", 2)[1]

    def names(field: str) -> set[str]:
        out: set[str] = set()
        for word in (w.strip() for w in field.split(",")):
            if word in ("", "(nothing)", "(base only)"):
                continue
            if word == "components/*":
                out |= COMPONENT_PACKAGES
            elif word in ("flows/", "align_cli/"):
                out.add(word.rstrip("/"))
            else:
                out.add("components." + re.sub(r"(/|\.py)$", "", word))
        return out

    table: dict[str, set[str]] = {}
    for line in block.splitlines():
        if "──▶" in line:
            left, right = line.split("──▶", 1)
            for package in names(left):
                table[package] = names(right) | (BASE if package in COMPONENT_PACKAGES - BASE else set())
    return table


def test_architecture_md_states_the_same_layers():
    documented = _architecture_table()
    expected = {package: allowed for package, allowed in ALLOWED.items() if package != "components"}
    differences = [
        f"{package}: ARCHITECTURE.md {sorted(documented.get(package, ()))} vs test {sorted(expected.get(package, ()))}"
        for package in sorted(set(documented) | set(expected))
        if documented.get(package) != expected.get(package)
    ]
    assert not differences, "ARCHITECTURE.md and ALLOWED disagree:\n" + "\n".join(differences)


if __name__ == "__main__":  # print the graph as it is: python -m tests.unit.test_import_layers
    counts: dict[tuple[str, str], int] = {}
    for _, _, src, dst, _ in edges():
        counts[src, dst] = counts.get((src, dst), 0) + 1
    for (src, dst), count in sorted(counts.items()):
        print(f"{src} -> {dst} ({count})")
