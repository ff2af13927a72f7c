"""Atomic file output for the library: write beside the target, then rename over it.

A process killed part-way leaves at most a ``.<name>.*.tmp`` file beside the target, never a
truncated target that a later step could take as complete. ``os.replace`` is atomic because
the temporary file lives in the target's own folder (same filesystem).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success flush it and rename it to ``target``.

    On an exception the temporary file is removed and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(target: Path | str, text: str) -> Path:
    """Write UTF-8 ``text`` (``\\n`` line ends) to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="\n")
    return Path(target)


def atomic_torch_save(content: Any, target: Path | str) -> Path:
    """``torch.save(content)`` to ``target`` atomically."""
    import torch

    with atomic_path(target) as tmp:
        # Through a file object: given a path, torch names the zip's inner folder after the
        # (random) temporary file name, so equal content would give different bytes and hashes.
        with open(tmp, "wb") as handle:
            torch.save(content, handle)
    return Path(target)
