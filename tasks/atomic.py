"""Atomic file output: write beside the target, then rename over it.

A stage that is killed part-way must never leave a file that a later stage (or a
re-run of DVC) could take as complete. Every output of the pipeline goes through
these helpers: the content lands in a temporary file in the target's folder (same
filesystem, so ``os.replace`` is atomic), is flushed to disk, and only then takes
the target's name. A crash leaves at most a ``.<name>.*.tmp`` file, which no stage
reads.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from model.atomic import atomic_path, temp_dir_beside


def write_bytes(target: Path | str, data: bytes) -> Path:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_text(target: Path | str, text: str) -> Path:
    """Write UTF-8 ``text`` to ``target`` atomically."""
    return write_bytes(target, text.encode("utf-8"))


def write_json(target: Path | str, obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON (stable bytes, so DVC hashes are stable)."""
    return write_text(target, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def publish_directory(target: Path | str, fill: Callable[[Path], None]) -> Path:
    """Build a directory with ``fill(staging_dir)`` and rename it to ``target``.

    An existing ``target`` is replaced only after the new content is complete. The
    swap is two renames (old out of the way, new in); a crash between them leaves
    no ``target`` at all, which is safe: the stage simply has to run again.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = temp_dir_beside(target, ".partial")
    try:
        fill(staging)
        if target.exists():
            retired = temp_dir_beside(target, ".old")
            retired.rmdir()
            os.replace(target, retired)
            os.replace(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def read_optional_json(path: Path) -> Any:
    """A JSON file's content, or None when the file does not exist (an optional input);
    a file that is not JSON is an error naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
