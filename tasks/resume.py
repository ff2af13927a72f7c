"""Where a training stage keeps its in-progress checkpoint, so that a killed run resumes.

DVC deletes a stage's declared outputs before running it (unless ``persist: true``),
so the checkpoint that ``model.training`` writes every ``checkpoint_every`` iterations
cannot be the stage's output: a re-run would find it gone and start from 0. And
``persist: true`` would be worse: after a parameter change the stage would "resume"
from a checkpoint trained with the old settings.

So the in-progress checkpoint lives outside the outputs, under
``outputs/.resume/<stage>-<key>.pt``, where ``key`` digests everything the training
depends on: the stage's declared params, the bytes of its input files and the source
of the code it runs. A re-run with the same inputs finds the file and resumes from
its last saved iteration; a re-run with anything changed uses another key and starts
from scratch (stale files of the stage are removed then). The stage's real output is
written (atomically) only when training has finished, and the in-progress files are
removed after that. A file next to the checkpoint remembers the MLflow run, so the
resumed run continues the same MLflow run rather than starting another.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.proposal_cache import file_sha256
from tasks import layout
from tasks.params import digest
from tasks.settings import selection, without_runtime_keys

# The code a training stage runs: a change here invalidates in-progress checkpoints.
CODE_DIRS = ("model", "tasks", "flows")


@dataclass(frozen=True)
class ResumeFiles:
    stage: str
    key: str
    checkpoint: Path  # written by model.training every checkpoint_every iterations
    run_info: Path  # {"mlflow_run_id": ...} of the run that made the checkpoint

    def mlflow_run_id(self) -> str | None:
        try:
            return str(json.loads(self.run_info.read_text(encoding="utf-8"))["mlflow_run_id"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def remember_run(self, run_id: str) -> None:
        from tasks.atomic import write_json

        write_json(self.run_info, {"mlflow_run_id": run_id, "stage": self.stage, "key": self.key})

    def clear(self) -> None:
        """Remove this stage's in-progress files (after its outputs are published)."""
        for path in (self.checkpoint, self.run_info):
            path.unlink(missing_ok=True)


def code_digest(root: Path | None = None) -> str:
    """sha256 over the ``.py`` files of the pipeline's code, by relative path."""
    root = root or layout.code_root()
    hasher = hashlib.sha256()
    for folder in CODE_DIRS:
        for path in sorted((root / folder).rglob("*.py")):
            hasher.update(str(path.relative_to(root)).encode("utf-8"))
            hasher.update(file_sha256(path).encode("ascii"))
    return hasher.hexdigest()


def resume_key(stage: str, settings: Any, inputs: Iterable[Path | str]) -> str:
    """Digest of the stage name, its params (those its ``settings`` were decoded from, less
    the runtime keys), its input files' bytes and the code."""
    hasher = hashlib.sha256()
    hasher.update(stage.encode("utf-8"))
    hasher.update(digest(without_runtime_keys(selection(settings))).encode("ascii"))
    for path in sorted(str(p) for p in inputs):
        hasher.update(path.encode("utf-8"))
        hasher.update(file_sha256(path).encode("ascii"))
    hasher.update(code_digest().encode("ascii"))
    return hasher.hexdigest()[:16]


def resume_files(stage: str, settings: Any, inputs: Iterable[Path | str]) -> ResumeFiles:
    """The in-progress files of this exact run of ``stage``; stale ones of the stage are deleted."""
    key = resume_key(stage, settings, inputs)
    layout.RESUME.mkdir(parents=True, exist_ok=True)
    files = ResumeFiles(
        stage=stage,
        key=key,
        checkpoint=layout.RESUME / f"{stage}-{key}.pt",
        run_info=layout.RESUME / f"{stage}-{key}.run.json",
    )
    for path in layout.RESUME.glob(f"{stage}-*"):
        if not path.name.startswith(f"{stage}-{key}."):
            path.unlink(missing_ok=True)
    # Temporary files of a save that was killed half-way (never read by anything).
    for path in layout.RESUME.glob(f".{stage}-*.tmp"):
        path.unlink(missing_ok=True)
    return files
