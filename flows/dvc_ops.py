"""What the pipeline flows ask of DVC: is a stage stale, record it in dvc.lock, and move a
stage's files through a DVC remote (fan-out over workers, ``flows.fanout``).

Between a fan-out worker and the pipeline flow, outputs travel the way ``dvc push
--run-cache`` / ``dvc repro --pull`` move them: the worker commits its stage (which also
saves a run-cache entry: the stage's deps, params and command -> its outs' hashes) and
pushes the entry and every out; the parent fetches the run cache, restores the stage's
outs from the entry that matches its own deps and params, and commits the stage, so its
dvc.lock records exactly the files the worker made.
"""
from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import chdir, contextmanager
from pathlib import Path
from typing import Any

from tasks.stages import source_of, stage_spec


class FanOutError(RuntimeError):
    """A fanned-out stage's files could not be brought over (no remote, no matching run)."""


@contextmanager
def _dvc_repo(root: Path) -> Iterator[Any]:
    """DVC's ``Repo`` of ``root``, run from ``root``: DVC resolves targets against the
    current directory (the pipeline flow runs there anyway)."""
    from dvc.repo import Repo

    with chdir(root), Repo(str(root)) as repo:
        yield repo


def git(root: Path, *args: str) -> str:
    """``git <args>`` in ``root``, its stdout (unstripped: porcelain lines start with a space);
    a ``FanOutError`` with git's message when it fails."""
    result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if result.returncode != 0:
        raise FanOutError(f"{root}: git {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def stale_stages(root: Path, stage: str) -> dict[str, Any]:
    """``dvc status <stage>``: empty when the stage is up to date."""
    with _dvc_repo(root) as repo:
        return repo.status(targets=[stage])


def should_run(root: Path, stage: str, force: bool, log: Any) -> bool:
    """Whether the pipeline runs ``stage`` now: stale under ``dvc status``, or ``force``.
    Logs the decision on ``log`` (a logger) either way."""
    status = stale_stages(root, stage)
    if not force and not status:
        log.info("stage %s is up to date, skipping", stage)
        return False
    log.info("running stage %s (%s)", stage, "forced" if force and not status else status)
    return True


def commit_stage(root: Path, stage: str) -> None:
    """``dvc commit --force <stage>``: record what the stage just ran with and produced
    (and save its run-cache entry)."""
    with _dvc_repo(root) as repo:
        repo.commit(stage, force=True)


def input_outs(stage: str) -> tuple[str, ...]:
    """The declared outputs of other stages that ``stage`` reads (what a worker pulls)."""
    found = (source_of(entry) for entry in stage_spec(stage).inputs)
    return tuple(dict.fromkeys(path for hit in found if hit is not None for path in [hit[1]]))


def pull_inputs(root: Path, stage: str) -> None:
    """``dvc pull`` of the upstream outputs ``stage`` reads (their hashes are in dvc.lock)."""
    targets = input_outs(stage)
    if not targets:
        return
    with _dvc_repo(root) as repo:
        # force: the worker's clone is its own; a stale input there is replaced, not asked about.
        repo.pull(targets=list(targets), force=True)


def push_outputs(root: Path, stage: str) -> None:
    """Push ``stage``'s run-cache entry and all its outs, the uncached ones (metrics,
    plots, reports) too: ``dvc push --run-cache`` sends only the cached outs, and the
    parent restores the uncached ones from the entry as well."""
    with _dvc_repo(root) as repo:
        repo.push(targets=[stage], run_cache=True)
        [committed] = repo.stage.collect(stage)
        uncached = [out.hash_info for out in committed.outs if not out.use_cache and out.hash_info]
        if uncached:
            result = repo.cloud.push(uncached)
            if result.failed:
                raise FanOutError(f"{stage}: pushing its uncached outputs failed: {sorted(map(str, result.failed))}")


def restore_from_remote(root: Path, stage: str) -> None:
    """Bring a stage another machine ran into ``root``: fetch the remote's run cache, check
    out the outs of the entry that matches ``root``'s deps, params and command (DVC's own
    ``dvc repro --pull`` restore), then ``dvc commit`` it into dvc.lock.

    The run cache keys an entry by the stage's inputs, so a worker that ran other code or
    params than ``root`` holds leaves no matching entry: that is an error here, not a
    silent local run.
    """
    from dvc.stage.cache import RunCacheNotFoundError

    with _dvc_repo(root) as repo, repo.lock:  # stage operations hold the repo lock, as under dvc repro
        repo.stage_cache.pull(None)
        [target] = repo.stage.collect(stage)
        target.remove_outs(ignore_remove=False, force=False)  # stale outs would block the checkout
        try:
            repo.stage_cache.restore(target, pull=True)
        except RunCacheNotFoundError as error:
            raise FanOutError(
                f"{stage}: no run in the DVC remote's run cache matches this workspace's deps and params "
                f"({error}); did the worker check out another commit or params?"
            ) from error
    commit_stage(root, stage)


def default_remote(root: Path) -> str | None:
    """The DVC remote ``dvc push`` uses in ``root`` (``core.remote``), None when none is set."""
    with _dvc_repo(root) as repo:
        return repo.config["core"].get("remote")


def require_remote(root: Path) -> str:
    """The default DVC remote of ``root``; a clear error when there is none."""
    remote = default_remote(root)
    if not remote:
        raise FanOutError(
            f"{root}: no default DVC remote; fan-out moves stage outputs through one that every worker "
            "reaches: dvc remote add -d <name> <url> (and commit .dvc/config)"
        )
    return remote
