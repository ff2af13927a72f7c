"""What a DVC stage pays before and around its work: process start to first work, and total.

Every stage is a process (``python -m flows.stage <stage>``, dvc.yaml's ``cmd``), so its
imports and start-up are paid about 33 times per ``dvc repro``. This builds a throwaway
workspace from a checkout (its code and conf/, params composed for a tiny profile with
random weights), runs ``prepare_data`` once to set it up (and to create the MLflow store),
then times a no-op-sized stage (default ``init_weights``: a tiny model built and saved)
``--repeats`` times:

- ``startup_s``: process start to the stage's task being called (``flows.runtime.call``):
  interpreter, imports, params checks, the task's module;
- ``total_s``: process start to exit; the work itself is tiny, so this is the stage's
  overhead: start-up plus the MLflow run around the work.

``--baseline DIR`` (another checkout, e.g. ``git worktree add /tmp/base <commit>``) is
timed the same way in the same run, alternating, and the ratio printed. Last line:
``stage_overhead_s=X`` (median ``total_s`` of the checkout). Time it on a quiet machine.

    python benchmarks/stage_overhead.py --baseline /tmp/base
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = ["data=tiny", "train=tiny", "model.pretrained=false"]
#: What a workspace needs of a checkout: the code and the Hydra config.
COPIED = ("model", "tasks", "flows", "conf", "dvc.yaml")
MARK = "stage_overhead:first_work"
# Runs the stage's command line, printing the time the stage's task is called: the
# runner calls every task through flows.runtime.call, so wrapping it marks the first work.
LAUNCHER = f"""
import runpy, sys, time
import flows.runtime as runtime
_call = runtime.call
def call(*args, **kwargs):
    print("{MARK}", repr(time.time()), file=sys.stderr, flush=True)
    return _call(*args, **kwargs)
runtime.call = call
sys.argv = ["flows.stage", *sys.argv[1:]]
runpy.run_module("flows.stage", run_name="__main__", alter_sys=True)
"""


def make_workspace(checkout: Path, dest: Path, overrides: list[str]) -> Path:
    """``dest`` with ``checkout``'s code and conf/ and params.yaml composed for ``overrides``."""
    from dvc.utils.hydra import compose_and_dump

    dest.mkdir(parents=True)
    for name in COPIED:
        source = checkout / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, dest / name)
    compose_and_dump(dest / "params.yaml", str(dest / "conf"), None, "config", str(dest), overrides)
    return dest


def run_stage(workspace: Path, stage: str) -> tuple[float, float]:
    """(startup_s, total_s) of one ``python -m flows.stage <stage>`` process in ``workspace``."""
    env = {**os.environ, "PYTHONPATH": str(workspace), "PYTHONDONTWRITEBYTECODE": "1"}
    started = time.time()
    result = subprocess.run([sys.executable, "-c", LAUNCHER, stage], cwd=workspace, env=env,
                            capture_output=True, text=True)
    ended = time.time()
    if result.returncode != 0:
        raise SystemExit(f"{stage} failed in {workspace} ({result.returncode}):\n{result.stderr[-3000:]}")
    marks = [line.split()[1] for line in result.stderr.splitlines() if line.startswith(MARK)]
    if not marks:
        raise SystemExit(f"{stage}: the task was never called (no {MARK} line):\n{result.stderr[-3000:]}")
    return float(marks[0]) - started, ended - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, default=ROOT, help="checkout to time (default: this one)")
    parser.add_argument("--baseline", type=Path, help="another checkout timed alongside, for a ratio")
    parser.add_argument("--stage", default="init_weights", help="the no-op-sized stage timed (default init_weights)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per checkout (median reported)")
    parser.add_argument("--override", action="append", help=f"Hydra override (default {OVERRIDES})")
    args = parser.parse_args(argv)
    overrides = args.override or OVERRIDES
    checkouts = {"checkout": args.checkout.resolve()}
    if args.baseline is not None:
        checkouts["baseline"] = args.baseline.resolve()
    with tempfile.TemporaryDirectory(prefix="stage-overhead-") as tmp:
        workspaces = {label: make_workspace(path, Path(tmp) / label, overrides) for label, path in checkouts.items()}
        for label, workspace in workspaces.items():
            startup, total = run_stage(workspace, "prepare_data")  # setup: the data, the MLflow store
            print(f"{label} prepare_data startup_s={startup:.3f} total_s={total:.3f} (setup, first run)")
        times: dict[str, list[tuple[float, float]]] = {label: [] for label in workspaces}
        for repeat in range(args.repeats):
            for label, workspace in workspaces.items():  # alternating: both see the same load
                startup, total = run_stage(workspace, args.stage)
                times[label].append((startup, total))
                print(f"{label} {args.stage} run {repeat + 1}: startup_s={startup:.3f} total_s={total:.3f}")
    medians = {label: (statistics.median(s for s, _ in runs), statistics.median(t for _, t in runs))
               for label, runs in times.items()}
    for label, (startup, total) in medians.items():
        print(f"{label} ({checkouts[label]}) {args.stage}: median startup_s={startup:.3f} total_s={total:.3f}")
    if "baseline" in medians:
        startup_ratio = medians["checkout"][0] / medians["baseline"][0]
        total_ratio = medians["checkout"][1] / medians["baseline"][1]
        print(f"startup_ratio={startup_ratio:.3f} total_ratio={total_ratio:.3f} (checkout / baseline)")
    print(f"stage_overhead_s={medians['checkout'][1]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
