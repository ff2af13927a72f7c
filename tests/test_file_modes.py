"""Every file and folder the project publishes atomically gets the mode the user's umask gives.

The umask is process-wide: each case sets it and restores it before returning, and runs only
library calls in between (no threads of ours are alive meanwhile).
"""
from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from model.atomic import atomic_torch_save, atomic_write_text
from model.data.synthetic import SyntheticSpec, generate_synthetic_voc
from tasks import atomic


@pytest.fixture(params=[0o022, 0o027, 0o077], ids=["umask022", "umask027", "umask077"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_files_follow_the_umask(tmp_path: Path, umask: int) -> None:
    expected = 0o666 & ~umask
    written = [
        atomic_write_text(tmp_path / "report.md", "# report\n"),
        atomic_torch_save({"w": torch.zeros(2)}, tmp_path / "model.pt"),
        atomic.write_json(tmp_path / "metrics.json", {"map": 0.5}),
        atomic.write_bytes(tmp_path / "blob.bin", b"\x00"),
    ]
    assert {p.name: oct(mode(p)) for p in written} == {p.name: oct(expected) for p in written}
    # Replacing an existing file publishes the new file's mode, not a leftover 0600.
    os.chmod(written[0], 0o600)
    atomic_write_text(written[0], "# again\n")
    assert mode(written[0]) == expected


def test_published_folders_follow_the_umask(tmp_path: Path, umask: int) -> None:
    target = tmp_path / "prepared"
    atomic.publish_directory(target, lambda d: (d / "manifest.json").write_text("{}"))
    atomic.publish_directory(target, lambda d: (d / "manifest.json").write_text("{}"))  # the replace path
    assert oct(mode(target)) == oct(0o777 & ~umask)
    assert oct(mode(target / "manifest.json")) == oct(0o666 & ~umask)


def test_synthetic_dataset_folder_follows_the_umask(tmp_path: Path, umask: int) -> None:
    root = generate_synthetic_voc(tmp_path / "synthetic", SyntheticSpec(num_images=2, image_size=(64, 48), object_size=(10.0, 30.0)))
    assert oct(mode(root)) == oct(0o777 & ~umask)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left
