"""Atomic file output for the library: write beside the target, then rename over it.

A process killed part-way leaves at most a ``.<name>.*.tmp`` file beside the target, never a
truncated target that a later step could take as complete. ``os.replace`` is atomic because
the temporary file lives in the target's own folder (same filesystem).

Temporary files and folders are created with modes 0666 / 0777 and the kernel applies the
process's umask, so the published file has the mode any ``open()`` would give it (0644 under
umask 022, 0640 under 027). ``tempfile.mkstemp`` / ``mkdtemp`` would give 0600 / 0700, which
the rename would carry to the target and make every output unreadable to the group.
"""
from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any


_NAME_ATTEMPTS = 100


def _beside(target: Path, suffix: str, create: Any) -> Path:
    """Create a fresh ``.<name>.<random><suffix>`` entry beside ``target`` with ``create(path)``.

    ``create`` must fail with ``FileExistsError`` when the path exists (O_EXCL, mkdir), so two
    writers never share a temporary entry.
    """
    for _ in range(_NAME_ATTEMPTS):
        path = target.parent / f".{target.name}.{secrets.token_hex(6)}{suffix}"
        try:
            create(path)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"{target.parent}: no free temporary name for {target.name} after {_NAME_ATTEMPTS} tries")


def temp_file_beside(target: Path | str, suffix: str = ".tmp") -> Path:
    """Create an empty temporary file beside ``target``, mode 0666 less the umask."""
    def create(path: Path) -> None:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666))

    return _beside(Path(target), suffix, create)


def temp_dir_beside(target: Path | str, suffix: str) -> Path:
    """Create an empty temporary folder beside ``target``, mode 0777 less the umask."""
    return _beside(Path(target), suffix, lambda path: os.mkdir(path, 0o777))


@contextlib.contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success flush it and rename it to ``target``.

    On an exception the temporary file is removed and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_file_beside(target)
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
