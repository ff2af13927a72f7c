"""One Prefect flow per DVC stage; ``python -m flows.stage <stage>`` is each stage's ``cmd``.

The flows follow from the stage registry (``tasks.stages``): each reads params.yaml
restricted to the keys its stage declares, decodes them once into typed settings
(``tasks.settings``: a bad value stops the stage with one line naming the key), checks
that the stages it needs have run, and calls the stage's task on those settings,
imported only then, so that a stage's code dependencies are its own task's imports. Run from the repository root (DVC does).
"""
from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import flows  # noqa: F401  (Prefect defaults before prefect is imported)
from flows.runtime import MODE_ENV, call, call_flow, run_flow

from tasks.lazy_prefect import flow
from tasks.params import ParamsError, load_params, select
from tasks.settings import RUNTIME_KEYS, Settings, SettingsError, decode, declares
from tasks.stages import ABLATION_ROWS, REGISTRY, STAGES, Stage, row_key, source_of, stage_spec

#: Read by every stage but not an input of any output (where runs are logged, like
#: MLFLOW_TRACKING_URI), so not a DVC param dependency: renaming the experiment
#: re-runs nothing.
TRACKING_PARAMS = ("tracking.experiment",)
#: How a stage runs, not what it makes (``tasks.settings.RUNTIME_KEYS``): read by every
#: stage, no DVC param and not in a resume key, so changing it re-runs and restarts nothing.
RUNTIME_PARAMS = RUNTIME_KEYS
#: dvc.yaml ``params:`` of every stage.
STAGE_PARAMS: dict[str, tuple[str, ...]] = {name: stage_spec(name).params for name in STAGES}


class MissingInputError(FileNotFoundError):
    """A stage was started before a stage it reads from."""


def stage_settings(stage: str, params_file: str = "params.yaml") -> Settings:
    """params.yaml restricted to ``stage``'s declared keys, plus the ``tracking`` and
    runtime settings, decoded into typed settings (``tasks.settings.decode``: a bad value
    stops here)."""
    everything = load_params(params_file)
    # One select: keys of one section (pipeline.seed, pipeline.ss_workers) merge.
    declared = (*STAGE_PARAMS[stage], *TRACKING_PARAMS, *RUNTIME_PARAMS)
    return decode(select(everything, declared, source=params_file), declared, source=params_file)


def check_inputs(spec: Stage, root: Path | None = None) -> None:
    """Refuse to start ``spec`` while a file another stage writes is missing, naming that stage."""
    root = root or Path.cwd()
    for entry in spec.inputs:
        if "${" in entry or (root / entry).exists():
            continue
        found = source_of(entry)
        if found is None:
            raise MissingInputError(f"{spec.name}: {entry} is missing")
        source = found[0]
        raise MissingInputError(f"{spec.name}: {entry} is missing: run stage {source} first (dvc repro {source})")


def run_stage(stage: str) -> dict[str, Any]:
    """Run ``stage``'s task on its typed settings (inside a flow: as a Prefect task run)."""
    spec = stage_spec(stage)
    settings = stage_settings(stage)
    check_inputs(spec)
    module, function = spec.task.split(":")
    task = getattr(importlib.import_module(module), function)
    return call(task, *spec.args, settings)


def _stage_flow(name: str) -> Callable[..., Any]:
    def run() -> dict[str, Any]:
        return run_stage(name)

    run.__name__ = run.__qualname__ = f"{name}_flow"
    return flow(name=name)(run)  # a Prefect flow when orchestrated; no prefect import before


@flow(name="ablation_row", flow_run_name="ablation@{row}")
def ablation_row_flow(row: str) -> dict[str, Any]:
    """One row of the ablation table (DVC stage ``ablation@<row>``)."""
    return run_stage(f"{ABLATION_ROWS.name}@{row}")


_FLOWS: dict[str, Callable[..., Any]] = {entry.name: _stage_flow(entry.name) for entry in REGISTRY
                                         if isinstance(entry, Stage)}


def stage_call(stage: str) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """The flow that runs ``stage`` and its arguments (the row key for ``ablation@<row>``)."""
    key = row_key(stage)
    if key is not None:
        return ablation_row_flow, (key,)
    stage_spec(stage)  # an unknown name fails here, naming the stages
    return _FLOWS[stage], ()


def configure_threads() -> None:
    """``FRCNN_THREADS=n`` sets torch's CPU threads (default: torch's own choice, one per core).

    On a machine shared with other jobs, 1 thread can beat 2 (oversubscription); like
    the device, the thread count is not a DVC param (the results do not depend on it
    beyond float rounding).
    """
    value = os.environ.get("FRCNN_THREADS", "").strip()
    if value:
        import torch

        torch.set_num_threads(int(value))


def data_parallel_processes(settings: Settings) -> int:
    """``pipeline.nproc_per_node`` of a stage that declares it (a training or inference stage), else 1."""
    if not (declares(settings, "pipeline") and declares(settings.pipeline, "nproc_per_node")):
        return 1
    return settings.pipeline.nproc_per_node


def under_torchrun() -> bool:
    """Whether torchrun started this process (it sets ``LOCAL_WORLD_SIZE`` for each worker)."""
    return "LOCAL_WORLD_SIZE" in os.environ


def torchrun_command(stage: str, nproc: int) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node N -m flows.stage <stage>``:
    N processes of this stage on this machine. Each joins the group in its task
    (``tasks.world.join``: gloo on the CPU, NCCL on CUDA)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "flows.stage", stage]


def execute_stage(root: Path, stage: str) -> None:
    """Run ``stage`` in ``root`` from a flow (the pipeline flow, or a fan-out worker's stage flow):
    its flow as a subflow (its plain function outside a flow run), or, with
    ``pipeline.nproc_per_node`` > 1, its own command, which starts its processes under torchrun
    (N processes cannot be this one; its rank 0 reports as a flow run of its own)."""
    if data_parallel_processes(stage_settings(stage, str(root / "params.yaml"))) > 1:
        subprocess.run([sys.executable, "-m", "flows.stage", stage], cwd=root, check=True)
        return
    flow_fn, args = stage_call(stage)
    call_flow(flow_fn, *args)


#: Errors that are the user's to fix (a setting, a stage run out of order): one line, no traceback.
USER_ERRORS = (SettingsError, ParamsError, MissingInputError)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.stage", description="Run one pipeline stage as a Prefect flow.")
    parser.add_argument("stage", choices=STAGES)
    args = parser.parse_args(argv)
    try:
        # Checked before any flow starts: a bad setting costs no Prefect run.
        settings = stage_settings(args.stage)
        check_inputs(stage_spec(args.stage))
        nproc = data_parallel_processes(settings)
        if nproc > 1 and not under_torchrun():
            # N processes of this same command, torchrun's exit status is the stage's.
            command = torchrun_command(args.stage, nproc)
            print(f"{args.stage}: {nproc} processes: {' '.join(command[1:])}", file=sys.stderr, flush=True)
            os.execv(command[0], command)
        configure_threads()
        if int(os.environ.get("RANK", "0")) > 0:
            # Rank 0's flow run is the stage's; the other ranks only train (tasks.world).
            os.environ[MODE_ENV] = "off"
        flow_fn, flow_args = stage_call(args.stage)
        run_flow(flow_fn, *flow_args)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
