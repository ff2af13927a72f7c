"""A stage's code dependencies, computed from imports (never kept by hand).

A stage's outputs depend on every module its entry module imports, directly or through
other modules, inside this project's packages (``model``, ``tasks``, ``flows``): editing
any of them must make ``dvc repro`` re-run the stage. ``closure`` follows ``import`` and
``from ... import`` statements anywhere in a module (function-local imports too: they run
when the stage calls that function), including the ``__init__.py`` of every package on
the way, since importing a submodule runs it.

The one rule for leaving a module out (``LOGGING_ONLY``): a module that cannot change
any file DVC tracks is not a dependency, and its imports are not followed. One does so:
``tasks/tracking.py``, whose effects reach only the experiment tracker (changing where
or how runs are logged must not re-train the models). (``tasks/settings.py`` decodes the
settings every task reads: a dependency of every stage.)
"""
from __future__ import annotations

import ast
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

#: The project's packages; imports of anything else (torch, prefect, ...) are not followed.
PACKAGES: tuple[str, ...] = ("model", "tasks", "flows")
#: Modules that cannot change a tracked file (see the module docstring).
LOGGING_ONLY: frozenset[str] = frozenset({"tasks/tracking.py"})


def _module_file(root: Path, dotted: str) -> Path | None:
    """The file of module ``dotted`` under ``root`` (``a/b.py`` or ``a/b/__init__.py``), if any."""
    base = root.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _package_inits(root: Path, dotted: str) -> list[Path]:
    """``__init__.py`` of every package enclosing ``dotted`` (run when it is imported)."""
    parts = dotted.split(".")
    inits = []
    for depth in range(1, len(parts)):
        init = root.joinpath(*parts[:depth], "__init__.py")
        if init.is_file():
            inits.append(init)
    return inits


def _dotted(root: Path, path: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imported_modules(root: Path, path: Path) -> set[Path]:
    """Project files that importing ``path`` runs directly (one level, no recursion)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = _dotted(root, path)
    is_package = path.name == "__init__.py"
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = here.split(".") if is_package else here.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            # ``from pkg import sub``: ``sub`` may be a submodule (or just a name in pkg).
            names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    found: set[Path] = set()
    for name in names:
        if name.split(".")[0] not in PACKAGES:
            continue
        file = _module_file(root, name)
        if file is not None:
            found.add(file)
            found.update(_package_inits(root, name))
    return found


@lru_cache(maxsize=None)
def _closure(root: Path, start: tuple[str, ...]) -> frozenset[str]:
    pending = [root / s for s in start]
    seen: set[Path] = set()
    while pending:
        path = pending.pop()
        if path in seen or path.relative_to(root).as_posix() in LOGGING_ONLY:
            continue
        seen.add(path)
        dotted = _dotted(root, path)
        pending.extend(_package_inits(root, dotted))
        pending.extend(imported_modules(root, path))
    return frozenset(p.relative_to(root).as_posix() for p in seen)


def closure(root: Path, start: Iterable[str]) -> set[str]:
    """Project files (relative posix paths) that running the modules ``start`` imports,
    themselves included, ``LOGGING_ONLY`` left out."""
    return set(_closure(root.resolve(), tuple(sorted(start))))


def compress(root: Path, files: Iterable[str]) -> list[str]:
    """``files`` with every folder whose ``.py`` files (recursively) are all among them
    written as the folder alone; sorted. Shorter dvc.yaml, same set of Python files.

    A folder holding other files (data, a ``__main__`` no stage imports) is listed file by file.
    """
    files = set(files)
    folders: set[str] = set()
    candidates = sorted({str(Path(f).parent.as_posix()) for f in files if "/" in f}, key=lambda d: d.count("/"))
    for folder in candidates:
        if folder in PACKAGES:  # never the whole package: too broad to read
            continue
        members = {p.relative_to(root).as_posix() for p in (root / folder).rglob("*") if p.is_file()
                   and "__pycache__" not in p.parts}
        if members and all(m.endswith(".py") for m in members) and members <= files:
            folders.add(folder)
    covered = {f for f in files if any(f.startswith(d + "/") for d in folders)}
    outer = {d for d in folders if not any(d.startswith(o + "/") for o in folders if o != d)}
    return sorted((files - covered) | outer)


def expand(root: Path, entries: Iterable[str]) -> set[str]:
    """The ``.py`` files named by dvc.yaml code entries (a folder: every ``.py`` under it)."""
    files: set[str] = set()
    for entry in entries:
        path = root / entry
        if path.is_dir():
            files.update(p.relative_to(root).as_posix() for p in path.rglob("*.py") if "__pycache__" not in p.parts)
        elif path.suffix == ".py":
            files.add(entry)
    return files
