"""Fan-out over workers, the parts that need no pipeline run (tests/test_pipeline_e2e.py
runs the tiny pipeline fanned out over two process workers).

- The stages handed to workers read only cached outputs of other stages: what a worker's
  ``dvc pull`` can bring (an uncached metrics file would be missing there).
- A stage's files travel through a real DVC remote: committed and pushed in one clone,
  restored and committed in another, the uncached outputs too, dvc.lock the same.
- The parent's state reaches a worker's clone: its commit (fetched from origin when
  absent), params.yaml and dvc.lock; a dirty code tree is refused by the parent.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows.dvc_ops import FanOutError, commit_stage, input_outs, push_outputs, restore_from_remote, stale_stages
from flows.fanout import LOCAL_STAGES, committed_head, fanned_out
from flows.stage_worker import sync_clone
from tasks.stages import STAGE_SPECS, STAGES, upstream

if shutil.which("git") is None:  # pragma: no cover - CI has git
    pytest.skip("git is needed for DVC", allow_module_level=True)

GIT = ["git", "-c", "user.email=test@example.com", "-c", "user.name=test"]
VENV_BIN = Path(sys.executable).parent


def git(repo: Path, *args: str) -> str:
    return subprocess.run([*GIT, *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def dvc(repo: Path, *args: str) -> str:
    result = subprocess.run([str(VENV_BIN / "dvc"), *args], cwd=repo, capture_output=True, text=True)
    assert result.returncode == 0, f"dvc {args}: {result.stdout}\n{result.stderr}"
    return result.stdout


def test_fanned_out_stages_read_only_cached_outputs_of_other_stages() -> None:
    cached = {path: spec.name for spec in STAGE_SPECS.values() for path in spec.outs}
    handed_out = [s for s in STAGES if fanned_out(s)]
    assert handed_out and set(LOCAL_STAGES) | set(handed_out) == set(STAGES)
    for stage in handed_out:
        for path in input_outs(stage):
            assert path in cached, f"{stage} reads {path}, which no stage caches: a worker cannot pull it"
        assert {cached[p] for p in input_outs(stage)} == set(upstream(stage))


# A stage with a cached out and an uncached metrics file (like the pipeline's stages).
DVC_YAML = {
    "stages": {
        "make": {
            "cmd": "python make.py",
            "deps": ["make.py", "input.txt"],
            "params": ["scale"],
            "outs": ["out/result.txt", {"metrics/make.json": {"cache": False}}],
        }
    }
}
MAKE = """import json, pathlib, yaml
scale = yaml.safe_load(open("params.yaml"))["scale"]
pathlib.Path("out").mkdir(exist_ok=True)
pathlib.Path("metrics").mkdir(exist_ok=True)
text = open("input.txt").read() * scale
pathlib.Path("out/result.txt").write_text(text)
pathlib.Path("metrics/make.json").write_text(json.dumps({"chars": len(text)}))
"""


def _toy_repo(path: Path, remote: Path) -> Path:
    path.mkdir()
    (path / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML))
    (path / "make.py").write_text(MAKE)
    (path / "input.txt").write_text("abc\n")
    (path / "params.yaml").write_text("scale: 3\n")
    git(path, "init", "-q")
    dvc(path, "init", "-q")
    dvc(path, "remote", "add", "-d", "shared", str(remote))
    git(path, "add", "-A")
    git(path, "commit", "-qm", "toy pipeline")
    return path


def test_stage_outputs_travel_through_the_remote_with_the_run_cache(tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    parent = _toy_repo(tmp_path / "parent", remote)
    worker = tmp_path / "worker"
    git(tmp_path, "clone", "-q", str(parent), str(worker))
    # The worker runs the stage and records it (which saves its run-cache entry), then pushes.
    subprocess.run([sys.executable, "make.py"], cwd=worker, check=True)
    commit_stage(worker, "make")
    push_outputs(worker, "make")
    assert not (parent / "out").exists() and stale_stages(parent, "make")
    # The parent takes the files from the remote: the cached out and the uncached metrics.
    restore_from_remote(parent, "make")
    assert (parent / "out/result.txt").read_text() == "abc\n" * 3
    assert (parent / "metrics/make.json").read_text() == (worker / "metrics/make.json").read_text()
    assert stale_stages(parent, "make") == {}
    lock = yaml.safe_load((parent / "dvc.lock").read_text())["stages"]["make"]
    assert lock == yaml.safe_load((worker / "dvc.lock").read_text())["stages"]["make"]
    # Stale outputs in the parent are replaced; other params have no run to restore from.
    (parent / "out/result.txt").write_text("stale")
    restore_from_remote(parent, "make")
    assert (parent / "out/result.txt").read_text() == "abc\n" * 3
    (parent / "params.yaml").write_text("scale: 5\n")
    with pytest.raises(FanOutError, match="make: no run in the DVC remote's run cache matches"):
        restore_from_remote(parent, "make")


def test_a_worker_clone_takes_the_parents_commit_params_and_lock(tmp_path: Path) -> None:
    parent = tmp_path / "parent"
    parent.mkdir()
    (parent / "code.py").write_text("print(1)\n")
    (parent / "params.yaml").write_text("a: 1\n")
    git(parent, "init", "-q")
    git(parent, "add", "-A")
    git(parent, "commit", "-qm", "one")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(parent), str(clone))
    # A commit made after the clone: the worker fetches it from origin.
    (parent / "code.py").write_text("print(2)\n")
    git(parent, "commit", "-qam", "two")
    head = committed_head(parent)
    (clone / "code.py").write_text("local edit\n")  # a worker's clone is the worker's
    sync_clone(clone, head, "a: 2\n", "schema: '2.0'\nstages: {}\n")
    assert git(clone, "rev-parse", "HEAD") == head
    assert (clone / "code.py").read_text() == "print(2)\n"
    assert (clone / "params.yaml").read_text() == "a: 2\n"
    assert (clone / "dvc.lock").read_text() == "schema: '2.0'\nstages: {}\n"
    sync_clone(clone, head, "a: 2\n", "")  # no dvc.lock yet in the parent: none in the clone
    assert not (clone / "dvc.lock").exists()
    with pytest.raises(FanOutError, match="commit 0{40} is neither here nor in its origin"):
        sync_clone(clone, "0" * 40, "a: 2\n", "")


def test_the_parent_refuses_uncommitted_code_but_not_params_or_outputs(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("code.py", "params.yaml", "dvc.lock"):
        (repo / name).write_text("x\n")
    (repo / "metrics").mkdir()
    (repo / "metrics" / "evaluate.json").write_text("{}\n")
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "one")
    for name in ("params.yaml", "dvc.lock", "metrics/evaluate.json"):
        (repo / name).write_text("changed\n")
    assert committed_head(repo) == git(repo, "rev-parse", "HEAD")
    (repo / "code.py").write_text("changed\n")
    with pytest.raises(FanOutError, match=r"uncommitted changes to \['code.py'\]"):
        committed_head(repo)
