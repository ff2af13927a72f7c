"""Where every stage reads and writes: the one place that names the pipeline's files.

The stages that write them are declared in ``tasks.stages`` (dvc.yaml follows from it).
Paths are relative to the workspace: the repository root, the folder DVC runs every
stage in (and the whole-pipeline flow changes into). ``workspace()`` is therefore the
current directory, not the folder this code was imported from: a flow imported from
one checkout may run the pipeline of another.

``outputs/.resume`` holds the in-progress checkpoints of the training stages. It is
deliberately not a DVC output: DVC deletes a stage's declared outputs before running
it, which would throw away the progress of a killed run. See ``tasks.resume``.
"""
from __future__ import annotations

import os
from pathlib import Path

PREPARED = Path("data/prepared")
MANIFEST = PREPARED / "manifest.json"
CLASSES = PREPARED / "classes.json"
SYNTHETIC_ROOT = PREPARED / "synthetic"
OUTPUTS = Path("outputs")
RESUME = OUTPUTS / ".resume"
METRICS = Path("metrics")
PLOTS = Path("plots")
REPORTS = Path("reports")
#: The key of a training stage's metrics file holding its training wall time in seconds (the
#: process's that finished it: after a resume, the part it ran); the report sums them.
WALL_SECONDS = "wall_seconds"


def code_root() -> Path:
    """The checkout this code was imported from (the parent folder of ``tasks/``)."""
    return Path(__file__).resolve().parent.parent


def workspace() -> Path:
    """The repository whose pipeline runs: the current directory (see the module docstring)."""
    return Path.cwd().resolve()


def tracking_root() -> Path:
    """Where the default MLflow store lives: the DVC repo that started the run.

    ``dvc exp run --temp`` and queued experiments run in a temporary copy but set
    ``DVC_ROOT`` to the original repository, so their runs land in its store.
    """
    return Path(os.environ.get("DVC_ROOT") or workspace()).resolve()


def checkpoint(stage: str) -> Path:
    """The finished checkpoint of a stage that produces a model."""
    return OUTPUTS / stage / "model.pt"


def proposals(stage: str, split_role: str) -> Path:
    """Proposal cache of a proposal stage; ``split_role`` is ``"train"`` or ``"test"``."""
    if split_role not in ("train", "test"):
        raise ValueError(f"split_role must be 'train' or 'test', got {split_role!r}")
    return OUTPUTS / stage / f"{split_role}.pt"


def metrics(stage: str) -> Path:
    return METRICS / f"{stage}.json"


def plot(stage: str, name: str) -> Path:
    return PLOTS / stage / f"{name}.png"


def results_dir(row: str) -> Path:
    """VOC devkit results files of the evaluate stage (``row``: ``"shared"`` / ``"unshared"``)."""
    return OUTPUTS / "evaluate" / row


def row_metrics(key: str) -> Path:
    """Metrics JSON of ablation row ``key`` (``metrics/ablations/<key>.json``)."""
    return METRICS / "ablations" / f"{key}.json"


def report(name: str) -> Path:
    """A file of the ablation report under ``reports/``."""
    return REPORTS / name
