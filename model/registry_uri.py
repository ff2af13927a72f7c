"""Checkpoints named by an MLflow Model Registry URI (``models:/NAME/VERSION``), fetched by the ``mlflow`` CLI.

The library imports no mlflow: a registry URI is resolved by running
``python -m mlflow artifacts download --artifact-uri URI`` in a subprocess (the same
interpreter, so the same installation and ``MLFLOW_TRACKING_URI``; unset, MLflow uses
``sqlite:///<current folder>/mlflow.db``, the pipeline's store when run from the
checkout). The registered version is the pipeline's pyfunc model
(``tasks/registered_detector.py``): its ``MLmodel`` names the checkpoint artifact, a plain
checkpoint file that ``model.checkpoint`` reads with ``weights_only=True``.
"""
from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from model.checkpoint import CheckpointError

SCHEME = "models:/"
_DOWNLOAD_TIMEOUT_S = 600


def is_registry_uri(text: str | Path) -> bool:
    return str(text).startswith(SCHEME)


@contextlib.contextmanager
def checkpoint_file(source: str | Path) -> Iterator[Path]:
    """``source`` itself when it is a path, else the downloaded checkpoint of a registry URI."""
    if not is_registry_uri(source):
        yield Path(source)
        return
    with registered_checkpoint(str(source)) as path:
        yield path


@contextlib.contextmanager
def registered_checkpoint(uri: str) -> Iterator[Path]:
    """Download the registered version ``uri`` into a temporary folder; yield its checkpoint file."""
    with tempfile.TemporaryDirectory(prefix="frcnn-registry-") as folder:
        command = [sys.executable, "-m", "mlflow", "artifacts", "download", "--artifact-uri", uri, "--dst-path", folder]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=_DOWNLOAD_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as error:
            raise CheckpointError(f"{uri}: cannot run the mlflow CLI to download it: {error}") from error
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines()
            raise CheckpointError(f"{uri}: mlflow could not download it: {lines[-1] if lines else 'no message'}")
        yield _checkpoint_in(Path(folder), uri)


def _checkpoint_in(folder: Path, uri: str) -> Path:
    """The ``checkpoint`` artifact named in the downloaded ``MLmodel``."""
    import yaml  # PyYAML comes with mlflow; only needed here

    mlmodel = next(iter(sorted(folder.rglob("MLmodel"))), None)
    if mlmodel is None:
        raise CheckpointError(f"{uri}: the registered version has no MLmodel file (not a model logged by the pipeline)")
    try:
        spec = yaml.safe_load(mlmodel.read_text(encoding="utf-8"))
        relative = spec["flavors"]["python_function"]["artifacts"]["checkpoint"]["path"]
    except (yaml.YAMLError, KeyError, TypeError) as error:
        raise CheckpointError(f"{uri}: its MLmodel names no 'checkpoint' artifact (not the pipeline's detector)") from error
    path = (mlmodel.parent / relative).resolve()
    if not path.is_relative_to(folder.resolve()) or not path.is_file():
        raise CheckpointError(f"{uri}: checkpoint artifact {relative!r} is missing from the download")
    return path
