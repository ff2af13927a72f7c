"""End to end: the tiny profile through ``dvc repro`` and through the whole-pipeline Prefect flow.

Each run happens in its own temporary git repository holding a copy of this working
tree (code, conf, dvc.yaml; no data, outputs or MLflow store), with params.yaml composed
for ``data=tiny train=tiny``. A Prefect test harness server (temporary database) stands
in for a real server: the stage flows that DVC starts report to it.

Checks: every stage's outputs; the MLflow runs and their metrics; that changing an
RPN-only parameter re-runs only what depends on it; that a training stage killed after
its first checkpoint resumes from that checkpoint; that the whole-pipeline flow leaves
the same files and a true dvc.lock. Total about 4-5 minutes on two CPU cores.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tasks.stages import ALTERNATING_STAGES, ROW_KEYS, STAGES, row_stage

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
PROFILE = ["data=tiny", "train=tiny"]
# What a copy of the working tree leaves out: environments, generated data and results.
_SKIP_TOP = {".venv", ".git", "data", "outputs", "metrics", "plots", "reports", "mlflow.db", "mlartifacts", "mlruns",
             "dvc.lock", ".prefect", "build", ".hydra"}
_SKIP_ANYWHERE = {"__pycache__", ".pytest_cache"}
_SKIP_DVC = {"cache", "tmp"}

if shutil.which("git") is None:  # pragma: no cover - CI has git
    pytest.skip("git is needed for DVC", allow_module_level=True)


def _ignore(directory: str, names: list[str]) -> list[str]:
    rel = Path(directory).resolve().relative_to(ROOT)
    skip = set(_SKIP_ANYWHERE)
    if rel == Path("."):
        skip |= _SKIP_TOP
    if rel == Path(".dvc"):
        skip |= _SKIP_DVC
    return [n for n in names if n in skip or n.endswith(".egg-info")]


def make_repo(dest: Path, overrides: list[str]) -> Path:
    """A git repository at ``dest`` holding this working tree with params composed for ``overrides``."""
    from dvc.utils.hydra import compose_and_dump

    shutil.copytree(ROOT, dest, ignore=_ignore)
    compose_and_dump(dest / "params.yaml", str(dest / "conf"), None, "config", "", overrides)
    git = ["git", "-c", "user.email=test@example.com", "-c", "user.name=test"]
    subprocess.run([*git, "init", "-q"], cwd=dest, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "pipeline under test"], cwd=dest, check=True)
    return dest


def run(cmd: list[str], repo: Path, env: dict[str, str], timeout: float = 1800) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"{cmd} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


def ran_stages(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def upstream(repo: Path) -> dict[str, set[str]]:
    """stage -> the stages whose outputs it reads (from ``dvc stage list``'s dvc.yaml, expanded)."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        stages = list(dvc_repo.index.stages)
        producer = {}
        for stage in stages:
            for out in stage.outs:
                producer[str(Path(out.def_path))] = stage.addressing
        return {
            stage.addressing: {
                producer[p] for dep in stage.deps for p in producer
                if str(Path(dep.def_path)) == p or str(Path(dep.def_path)).startswith(p + "/")
            } - {stage.addressing}
            for stage in stages
        }


def assert_topological(order: list[str], repo: Path) -> None:
    """Every stage that ran, ran after every stage it reads from that also ran."""
    position = {stage: i for i, stage in enumerate(order)}
    for stage, sources in upstream(repo).items():
        for source in sources:
            if stage in position and source in position:
                assert position[source] < position[stage], f"{stage} ran before {source}: {order}"


def lock_outs(repo: Path) -> dict[str, str]:
    """Hashes of the outputs, less metrics/ and reports/: they hold wall times (training, Table 5)."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])
            if not out["path"].startswith(("metrics/", "reports/"))}


#: Where the stages' uncached outputs live (metrics, PNG plots, small reports).
UNCACHED_DIRS = ("metrics", "plots", "reports")
#: Metrics keys that measure time on this machine (wall times, Table 5's ms, fps and ratios).
CLOCK_KEYS = re.compile(r"seconds|_ms$|^fps$|_ratio_|^train_s$")


def without_clock(value: object) -> object:
    if isinstance(value, dict):
        return {k: without_clock(v) for k, v in value.items() if not CLOCK_KEYS.search(str(k))}
    if isinstance(value, list):
        return [without_clock(v) for v in value]
    return value


def metrics_files(root: Path) -> dict[str, object]:
    """Every metrics file under ``root``/metrics, less the clock readings."""
    return {str(p.relative_to(root)): without_clock(json.loads(p.read_text()))
            for p in (root / "metrics").rglob("*.json")}


def mlflow_runs(repo: Path) -> list:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo.resolve()}/mlflow.db")
    experiment = client.get_experiment_by_name("faster-rcnn-alternating")
    assert experiment is not None, "no MLflow experiment was created"
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return [r for r in runs if r.data.tags.get("pipeline_parent") != "true"]  # the stages' runs


def parent_runs(repo: Path) -> list:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo.resolve()}/mlflow.db")
    experiment = client.get_experiment_by_name("faster-rcnn-alternating")
    return client.search_runs([experiment.experiment_id], "tags.pipeline_parent = 'true'")


def set_param(repo: Path, dotted: str, value: object) -> None:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    node = params
    *parents, last = dotted.split(".")
    for key in parents:
        node = node[key]
    node[last] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prefect test-harness server (temporary database) for this module's flow runs."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("prefect-home")
    with temporary_settings({PREFECT_HOME: str(home)}):
        with prefect_test_harness(server_startup_timeout=90):
            yield PREFECT_API_URL.value()


@pytest.fixture(scope="module")
def env(prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment of the DVC / flow subprocesses: the venv first on PATH, the harness API."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_", "FRCNN_", "PREFECT_"))}
    environment.update(
        PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        PREFECT_API_URL=prefect_api,
        PREFECT_HOME=str(tmp_path_factory.mktemp("prefect-client-home")),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        MLFLOW_DISABLE_TELEMETRY="true",
        DVC_NO_ANALYTICS="1",
        PYTHONUNBUFFERED="1",
    )
    return environment


@pytest.fixture(scope="module")
def repro_repo(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]) -> dict:
    """The tiny profile through ``dvc repro`` once; later tests change it further."""
    repo = make_repo(tmp_path_factory.mktemp("repro") / "repo", PROFILE)
    started = time.monotonic()
    result = run(["dvc", "repro"], repo, env)
    seconds = time.monotonic() - started
    # The finished run as the fan-out test starts from it (later tests change this repository):
    # its cached outputs in a local DVC remote, its dvc.lock and uncached outputs copied.
    remote = tmp_path_factory.mktemp("dvc-remote")
    run(["dvc", "remote", "add", "--local", "-d", "shared", str(remote)], repo, env)
    run(["dvc", "push", "--quiet"], repo, env)
    snapshot = tmp_path_factory.mktemp("repro-snapshot")
    shutil.copy2(repo / "dvc.lock", snapshot / "dvc.lock")
    for name in UNCACHED_DIRS:
        shutil.copytree(repo / name, snapshot / name)
    return {
        "repo": repo,
        "output": result.stdout + result.stderr,
        "seconds": seconds,
        "lock_outs": lock_outs(repo),
        "started_at": started,
        "remote": remote,
        "snapshot": snapshot,
    }


# --------------------------------------------------------------------------- tests


def test_dvc_repro_runs_every_stage_and_writes_its_outputs(repro_repo: dict, env: dict[str, str]) -> None:
    import torch

    repo, output = repro_repo["repo"], repro_repo["output"]
    ran = ran_stages(output)
    assert sorted(ran) == sorted(STAGES) and len(ran) == len(STAGES)
    assert [s for s in ran if s in ALTERNATING_STAGES] == list(ALTERNATING_STAGES)
    assert_topological(ran, repo)
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        if "foreach" in stage:
            for key in stage["foreach"]:
                assert (repo / "metrics" / "ablations" / f"{key}.json").exists(), f"{name}@{key}: metrics missing"
            continue
        for entry in stage.get("outs", []) + stage.get("metrics", []) + stage.get("plots", []):
            path = repo / (entry if isinstance(entry, str) else next(iter(entry)))
            assert path.exists(), f"{name}: {path} missing"
            if path.suffix == ".png":
                assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Nothing half-written left behind, no in-progress checkpoint left over.
    assert not list((repo / "outputs").rglob("*.tmp"))
    assert not list((repo / "outputs" / ".resume").glob("*.pt"))
    # Checkpoints and caches are plain tensors (weights_only) and carry what the next steps check.
    final = torch.load(repo / "outputs/final/model.pt", weights_only=True)
    assert final["config"]["class_names"] == ["circle", "square", "triangle"]
    assert final["config"]["test_proposals"]["post_nms_top_n"] == 50  # the tiny profile's
    cache = torch.load(repo / "outputs/step3_proposals/train.pt", weights_only=True)
    fingerprint = json.loads(cache["fingerprint"])
    from model.proposal_cache import file_sha256

    assert fingerprint["checkpoint_sha256"] == file_sha256(repo / "outputs/step3_rpn/model.pt")
    assert fingerprint["proposal_config"]["post_nms_top_n"] == 100
    # Metrics: recall at 0.5 / 0.7 for 300 / 1000 / 2000 proposals, mAP of both rows.
    recall = json.loads((repo / "metrics/step1_proposals.json").read_text())["recall"]
    assert set(recall) == {"300", "1000", "2000"} and all(set(r) == {"0.5", "0.7"} for r in recall.values())
    evaluation = json.loads((repo / "metrics/evaluate.json").read_text())
    assert 0.0 <= evaluation["mAP"] <= 1.0 and 0.0 <= evaluation["unshared_mAP"] <= 1.0
    assert set(evaluation["shared"]["ap"]) == {"circle", "square", "triangle"}
    assert "AP50" in evaluation["shared"]["coco"]
    # The report has every row and is printed at the end of `dvc repro`.
    from tasks.ablation_report import read_report_csv

    table = read_report_csv(repo / "reports/ablations.csv")
    assert list(table.index) == list(ROW_KEYS)
    assert "rows agree in sign with the paper" in output.split("Running stage 'ablation_report'")[1]
    recall_csv = (repo / "reports/recall_vs_iou.csv").read_text().splitlines()
    assert recall_csv[0].startswith("iou,ss_300,ss_1000,ss_2000,rpn_shared_300")
    assert len(recall_csv) == 1 + 10  # IoU 0.5, 0.55, ..., 0.95
    # The paper's claims as sections of the report: headline, recall at 300, Table 5 (columns only).
    report = (repo / "reports/ablations.md").read_text()
    assert "## Headline: selective search vs the RPN" in report and "## Recall at 300 proposals" in report
    assert "## Timing per image (paper Table 5)" in report
    assert "| system | device | conv_ms | proposal_ms | region_ms | total_ms | fps |" in report
    timing = json.loads((repo / "metrics/timing.json").read_text())
    assert {"conv_ms", "proposal_ms", "region_ms", "total_ms", "fps"} <= set(timing["ss"]) and timing["device"]
    assert "verdict" in table.columns
    headline = json.loads((repo / "metrics/ablation_report.json").read_text())["headline"]
    assert all(headline[key]["our_map"] is not None for key in ("ss_test_2000", "shared", "unshared"))
    step2 = json.loads((repo / "metrics/step2_fast_rcnn.json").read_text())
    assert step2["iterations"] == 4 and step2["resumed_from"] == 0
    # Its score is a stage of its own (evaluation settings are no input of the training).
    assert "mAP" in json.loads((repo / "metrics/step2_fast_rcnn_score.json").read_text())
    # dvc.lock is true: nothing to do.
    status = run(["dvc", "status", "--json"], repo, env).stdout
    assert json.loads(status) == {}


def test_each_stage_logged_an_mlflow_run(repro_repo: dict) -> None:
    runs = mlflow_runs(repro_repo["repo"])
    assert sorted(r.data.tags["stage"] for r in runs) == sorted(STAGES)
    assert all(r.info.status == "FINISHED" for r in runs)
    ids = {r.data.tags["pipeline_run_id"] for r in runs}
    assert len(ids) == 1 and next(iter(ids)).startswith("repro-")
    # One parent run for the execution, every stage's run nested under it, ended by the summary.
    [parent] = [p for p in parent_runs(repro_repo["repo"]) if p.data.tags["pipeline_run_id"] in ids]
    assert parent.info.status == "FINISHED"
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    assert parent.data.metrics["mAP"] == json.loads((repro_repo["repo"] / "metrics/summary.json").read_text())["mAP"]
    by_stage = {r.data.tags["stage"]: r for r in runs}
    # Stages ran as Prefect flows reporting to the harness.
    assert all(r.data.tags.get("prefect_flow_run_id") for r in runs)
    for stage in ("step1_proposals", "step3_proposals"):
        metrics = by_stage[stage].data.metrics
        for n in (300, 1000, 2000):
            for iou in ("0.5", "0.7"):
                assert 0.0 <= metrics[f"recall/{n}/{iou}"] <= 1.0
    for stage in ("step2_fast_rcnn_score", "step4_fast_rcnn_score", "ss_fast_rcnn_score", "one_stage_score"):
        metrics = by_stage[stage].data.metrics
        assert {"mAP", "ap/circle", "ap/square", "ap/triangle", "coco/AP", "coco/AP50"} <= set(metrics)
    evaluate = by_stage["evaluate"].data.metrics
    assert {"mAP", "unshared_mAP", "shared/ap/circle", "unshared/coco/AP"} <= set(evaluate)
    assert by_stage["step1_rpn"].data.params["train.step1_rpn.iterations"] == "4"
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repro_repo['repo'].resolve()}/mlflow.db")
    for stage in ("step1_rpn", "step2_fast_rcnn", "step3_rpn", "step4_fast_rcnn"):
        history = client.get_metric_history(by_stage[stage].info.run_id, "train/total")
        assert [m.step for m in history] == [1, 2, 3, 4], stage
        artifacts = {a.path for a in client.list_artifacts(by_stage[stage].info.run_id, "plots")}
        assert "plots/loss.png" in artifacts
    # Ablations: every row its own run with its mAP; the recall table per method; the report
    # as metrics, files and an MLflow table.
    for key in ROW_KEYS:
        row_run = by_stage[row_stage(key)]
        assert row_run.data.tags["ablation_row"] == key and 0.0 <= row_run.data.metrics["mAP"] <= 1.0
    recall = by_stage["proposal_recall"].data.metrics
    for method in ("ss", "rpn_shared", "rpn_unshared", "rpn_strong"):
        assert 0.0 <= recall[f"{method}/recall/300/0.7"] <= 1.0
    report = by_stage["ablation_report"]
    assert report.data.metrics["rows_compared"] >= 1
    assert {f"ablation_{key}_map" for key in ROW_KEYS} <= set(report.data.metrics)
    report_files = {a.path for a in client.list_artifacts(report.info.run_id, "ablations")}
    assert {"ablations/ablations.md", "ablations/ablations.csv", "ablations/ablations.png",
            "ablations/ablations_table.json"} <= report_files
    # The final model is registered (code-defined pyfunc, checkpoint artifact) with its metrics.
    evaluate_run = by_stage["evaluate"]
    versions = client.search_model_versions("name = 'faster-rcnn-alternating-final'")
    mine = [v for v in versions if v.tags.get("pipeline_run_id") == evaluate_run.data.tags["pipeline_run_id"]]
    assert len(mine) == 1 and evaluate_run.data.tags["registered_model"].endswith(f"/{mine[0].version}")
    assert float(mine[0].tags["mAP"]) == pytest.approx(evaluate_run.data.metrics["mAP"], abs=1e-5)
    inputs = client.get_run(evaluate_run.info.run_id).inputs.dataset_inputs
    assert [i.dataset.name.endswith("/test") for i in inputs] == [True], "evaluate read the test split"
    assert by_stage["step1_rpn"].data.tags["device"] == "cpu"


def test_prefect_saw_every_stage_flow(repro_repo: dict, prefect_api: str) -> None:
    import asyncio

    from prefect.client.orchestration import get_client

    async def all_flow_runs(client) -> list:
        runs, offset = [], 0
        while True:  # the API serves at most 200 per request
            page = await client.read_flow_runs(limit=200, offset=offset)
            runs += page
            offset += len(page)
            if len(page) < 200:
                return runs

    async def names() -> list[tuple[str, str]]:
        async with get_client() as client:
            runs = await all_flow_runs(client)
            flows = {f.id: f.name for f in await client.read_flows(limit=200)}
            return [(flows[r.flow_id], r.state.type.value) for r in runs]

    async def run_names() -> list[tuple[str, str, str]]:
        async with get_client() as client:
            runs = await all_flow_runs(client)
            flows = {f.id: f.name for f in await client.read_flows(limit=200)}
            return [(flows[r.flow_id], r.name, r.state.type.value) for r in runs]

    seen = asyncio.run(names())
    for stage in ALTERNATING_STAGES:
        assert (stage, "COMPLETED") in seen, f"no completed Prefect flow run for {stage}: {seen}"
    # Every ablation row ran as a flow run named after its DVC stage.
    runs = asyncio.run(run_names())
    for key in ROW_KEYS:
        assert ("ablation_row", row_stage(key), "COMPLETED") in runs, f"no completed flow run for row {key}"


STEP3_ITERATIONS = 24


@pytest.fixture(scope="module")
def killed_and_resumed(repro_repo: dict, env: dict[str, str]) -> dict:
    """Change step 3's RPN schedule, kill ``dvc repro`` after step 3's first checkpoint, run it again.

    The change touches an RPN-only parameter (step 3's), so the same run also shows
    which stages a parameter change re-runs.
    """
    import torch

    repo = repro_repo["repo"]
    set_param(repo, "train.step3_rpn.iterations", STEP3_ITERATIONS)
    set_param(repo, "train.step3_rpn.checkpoint_every", 2)
    resume_dir = repo / "outputs" / ".resume"
    proc = subprocess.Popen(["dvc", "repro"], cwd=repo, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    saved = None
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            found = list(resume_dir.glob("step3_rpn-*.pt"))
            if found:
                saved = int(torch.load(found[0], weights_only=True)["train_state"]["iteration"])
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    after_kill = {
        "step3_output_exists": (repo / "outputs/step3_rpn/model.pt").exists(),
        "status": json.loads(run(["dvc", "status", "--json"], repo, env).stdout),
    }
    rerun = run(["dvc", "repro"], repo, env)
    return {"repo": repo, "saved": saved, "after_kill": after_kill, "output": rerun.stdout}


def test_rpn_parameter_change_reruns_only_dependent_stages(
    repro_repo: dict, killed_and_resumed: dict, env: dict[str, str]
) -> None:
    repo = repro_repo["repo"]
    # A step-3 RPN parameter: steps 1-2 and their inputs are untouched, step 3 onwards re-run.
    output = killed_and_resumed["output"]
    # ...and of the ablations, what reads the final model: its row, the recall figure, the report.
    rerun = ["step3_rpn", "step3_proposals", "step4_fast_rcnn", "assemble", "evaluate", "step4_fast_rcnn_score",
             row_stage("shared"), "proposal_recall", "timing", "ablation_report", "summary"]
    ran = ran_stages(output)
    # (The report re-runs when the shared row's result file changed; with 4-iteration tiny
    # models both results can be the same bytes, and then DVC rightly skips it.)
    assert set(rerun) - {"ablation_report"} <= set(ran) <= set(rerun) and len(ran) == len(set(ran))
    assert_topological(ran, repo)
    skipped = set(re.findall(r"Stage '([^']+)' didn't change, skipping", output))
    assert skipped == set(STAGES) - set(ran)
    assert json.loads(run(["dvc", "status", "--json"], repo, env).stdout) == {}
    # An RPN labelling parameter is declared by the RPN steps and the joint training only.
    params = repo / "params.yaml"
    original = params.read_text()
    set_param(repo, "model.rpn.positive_iou", 0.65)
    try:
        changed = set(json.loads(run(["dvc", "status", "--json"], repo, env).stdout))
    finally:
        params.write_text(original)
    assert changed == {"step1_rpn", "step3_rpn", "strong_rpn", "joint_train"}
    # The re-run's MLflow runs form a new pipeline execution (params changed).
    runs = mlflow_runs(repo)
    first_id = {r.data.tags["pipeline_run_id"] for r in runs if r.data.tags["stage"] == "step1_rpn"}
    step3 = [r for r in runs if r.data.tags["stage"] == "step3_rpn"]
    assert len(step3) == 2 and len({r.data.tags["pipeline_run_id"] for r in step3} - first_id) == 1


def test_killed_training_stage_resumes_from_its_checkpoint(killed_and_resumed: dict) -> None:
    import mlflow

    repo, saved = killed_and_resumed["repo"], killed_and_resumed["saved"]
    assert saved is not None, "the stage finished or failed before its first checkpoint appeared"
    assert 2 <= saved < STEP3_ITERATIONS
    # Killed mid-training: no output a later stage could take as complete, and DVC knows.
    assert not killed_and_resumed["after_kill"]["step3_output_exists"]
    assert "step3_rpn" in killed_and_resumed["after_kill"]["status"]
    # The re-run resumed from the saved iteration (or a later save), not from 0.
    metrics = json.loads((repo / "metrics/step3_rpn.json").read_text())
    assert metrics["iterations"] == STEP3_ITERATIONS
    assert saved <= metrics["resumed_from"] < STEP3_ITERATIONS and metrics["resumed_from"] % 2 == 0
    assert (repo / "outputs/step3_rpn/model.pt").exists()
    assert not list((repo / "outputs" / ".resume").glob("step3_rpn-*"))  # removed once published
    # One MLflow run covers the killed and the resumed part, every iteration logged.
    runs = [r for r in mlflow_runs(repo) if r.data.tags["stage"] == "step3_rpn"
            and r.data.params.get("train.step3_rpn.iterations") == str(STEP3_ITERATIONS)]
    assert len(runs) == 1 and runs[0].data.tags.get("resumed") == "true" and runs[0].info.status == "FINISHED"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo.resolve()}/mlflow.db")
    steps = {m.step for m in client.get_metric_history(runs[0].info.run_id, "train/total")}
    assert steps == set(range(1, STEP3_ITERATIONS + 1))


def test_pipeline_flow_gives_the_same_files_and_a_true_lock(
    repro_repo: dict, env: dict[str, str], tmp_path: Path, prefect_api: str
) -> None:
    repo = make_repo(tmp_path / "repo", PROFILE)
    # Two ablation rows at a time: the rows run as concurrent task runs of the flow.
    result = run([sys.executable, "-m", "flows.pipeline"], repo, {**env, "FRCNN_ABLATION_WORKERS": "2"})
    # The flow's return value is printed last, but DVC may log after it ("Updating lock file").
    summary = next(line for line in reversed(result.stdout.splitlines()) if "'ran': [" in line)
    assert "'ran': [" + ", ".join(f"'{s}'" for s in STAGES) + "]" in summary
    assert "'artifacts': ['headline-numbers', 'ablation-report']" in summary  # shown on the flow run's page
    # dvc.lock is true: DVC sees nothing to do.
    assert json.loads(run(["dvc", "status", "--json"], repo, env).stdout) == {}
    # The same files as under `dvc repro` (CPU training is deterministic for a seed).
    assert lock_outs(repo) == repro_repo["lock_outs"]
    # Every stage shares the flow run's id as pipeline_run_id in MLflow.
    runs = mlflow_runs(repo)
    assert sorted(r.data.tags["stage"] for r in runs) == sorted(STAGES)
    flow_run_ids = {r.data.tags["pipeline_run_id"] for r in runs}
    assert len(flow_run_ids) == 1
    [flow_run_id] = flow_run_ids

    import asyncio
    from uuid import UUID

    from prefect.client.orchestration import get_client

    async def check() -> None:
        async with get_client() as client:
            parent = await client.read_flow_run(UUID(flow_run_id))
            assert parent.state.is_completed()
            flow = await client.read_flow(parent.flow_id)
            assert flow.name == "faster-rcnn-pipeline"
            from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

            tasks = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[parent.id])), limit=200
            )
            rows = [t for t in tasks if t.task_key.startswith("ablation_row") or t.name.startswith("ablation_row")]
            assert len(rows) == len(ROW_KEYS) and all(t.state.is_completed() for t in rows)

    asyncio.run(check())


# --------------------------------------------------------------------------- fan-out over workers


def start_worker(clone: Path, name: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    """A process worker taking the stage deployment's flow runs (pool ``cpu``, queue ``stages``)
    one at a time, in ``clone``."""
    worker_env = {**env, "FRCNN_STAGE_CLONE": str(clone), "PREFECT_WORKER_QUERY_SECONDS": "1"}
    command = ["prefect", "worker", "start", "--pool", "cpu", "--work-queue", "stages", "--limit", "1", "--name", name]
    with open(log, "w") as out:
        return subprocess.Popen(command, cwd=clone, env=worker_env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop_worker(worker: subprocess.Popen) -> None:
    if worker.poll() is None:
        os.killpg(worker.pid, signal.SIGINT)  # a process worker ignores SIGTERM
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=30)


def test_fanned_out_pipeline_over_two_workers_gives_the_same_files_and_metrics(
    repro_repo: dict, env: dict[str, str], tmp_path: Path, prefect_api: str
) -> None:
    """The stages after the four steps on two process workers, each in its own clone, their
    outputs through a local-directory DVC remote; the four steps come from ``dvc repro``'s
    run through the same remote (their dvc.lock entries, their files pulled) so that they
    are not trained again."""
    from flows.fanout import LOCAL_STAGES

    snapshot = repro_repo["snapshot"]
    parent = make_repo(tmp_path / "parent", PROFILE)
    git = ["git", "-c", "user.email=test@example.com", "-c", "user.name=test"]
    run(["dvc", "remote", "add", "-d", "shared", str(repro_repo["remote"])], parent, env)
    run([*git, "commit", "-qam", "the DVC remote every worker reaches"], parent, env)
    lock = yaml.safe_load((snapshot / "dvc.lock").read_text())
    lock["stages"] = {name: entry for name, entry in lock["stages"].items() if name in ALTERNATING_STAGES}
    (parent / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    run(["dvc", "pull", "--quiet", *ALTERNATING_STAGES], parent, env)
    for entry in lock["stages"].values():
        for out in entry.get("outs", []):
            if not (parent / out["path"]).exists():  # uncached: not in the remote
                (parent / out["path"]).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(snapshot / out["path"], parent / out["path"])
    assert json.loads(run(["dvc", "status", "--json", *ALTERNATING_STAGES], parent, env).stdout) == {}
    clones = [tmp_path / f"clone-{n}" for n in ("a", "b")]
    for clone in clones:
        run(["git", "clone", "-q", str(parent), str(clone)], tmp_path, env)
    run(["prefect", "work-pool", "create", "cpu", "--type", "process"], parent, env)
    run(["prefect", "--no-prompt", "deploy", "--name", "stage-cpu"], parent, env)
    workers = [start_worker(clone, clone.name, env, tmp_path / f"{clone.name}.log") for clone in clones]
    try:
        result = run([sys.executable, "-m", "flows.pipeline", "--fan-out"], parent, env, timeout=2400)
    finally:
        for worker in workers:
            stop_worker(worker)
    handed_out = [s for s in STAGES if s not in LOCAL_STAGES]
    summary = next(line for line in reversed(result.stdout.splitlines()) if "'ran': [" in line)
    ran = re.search(r"'ran': \[([^\]]*)\]", summary).group(1)
    assert sorted(re.findall(r"'([^']+)'", ran)) == sorted([*handed_out, "ablation_report", "summary"])
    # dvc.lock is true, the files are the single-process run's, and so are the metrics.
    assert json.loads(run(["dvc", "status", "--json"], parent, env).stdout) == {}
    assert lock_outs(parent) == repro_repo["lock_outs"]
    assert metrics_files(parent) == metrics_files(snapshot)
    # Each handed-out stage ran once, as a subflow run of the pipeline's flow run, on one of
    # the workers (its clone's MLflow store holds its run, of this execution); both worked.
    by_clone = {clone.name: mlflow_runs(clone) if (clone / "mlflow.db").exists() else [] for clone in clones}
    stages_by_clone = {name: sorted(r.data.tags["stage"] for r in runs) for name, runs in by_clone.items()}
    assert sorted(s for stages in stages_by_clone.values() for s in stages) == sorted(handed_out)
    assert all(stages_by_clone.values()), f"a worker ran nothing: {stages_by_clone}"
    [pipeline_id] = {r.data.tags["pipeline_run_id"] for runs in by_clone.values() for r in runs}
    import asyncio
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    async def stage_runs() -> list:
        async with get_client() as client:
            stage_flow = FlowFilter(name=FlowFilterName(any_=["faster-rcnn-stage"]))
            return await client.read_flow_runs(flow_filter=stage_flow, limit=200)

    runs = asyncio.run(stage_runs())
    assert sorted(r.name for r in runs) == sorted(handed_out)
    assert all(r.state.is_completed() and r.parent_task_run_id is not None for r in runs)

    async def parent_state() -> bool:
        async with get_client() as client:
            return (await client.read_flow_run(UUID(pipeline_id))).state.is_completed()

    assert asyncio.run(parent_state())


# --------------------------------------------------------------------------- joint training
# Reads the shared run's outputs, then changes the repo (kills and resumes joint_train): keep last.

JOINT_ITERATIONS = 12


def test_joint_training_stages_alone_resumed_scored_reported_and_registered(
    repro_repo: dict, env: dict[str, str]
) -> None:
    import mlflow
    import torch

    repo = repro_repo["repo"]
    # The shared run trained and scored the joint model, and timed every training stage.
    joint = json.loads((repo / "metrics/joint_train.json").read_text())
    assert joint["iterations"] == 4 and joint["resumed_from"] == 0 and joint["wall_seconds"] > 0
    for stage in ("step1_rpn", "step2_fast_rcnn", "step3_rpn", "step4_fast_rcnn"):
        assert json.loads((repo / f"metrics/{stage}.json").read_text())["wall_seconds"] > 0, stage
    scores = json.loads((repo / "metrics/joint_evaluate.json").read_text())
    assert 0.0 <= scores["mAP"] <= 1.0 and set(scores["ap"]) == {"circle", "square", "triangle"}
    assert "AP50" in scores["coco"]
    assert sorted(p.name for p in (repo / "outputs/joint_evaluate/results").iterdir())
    report = (repo / "reports/ablations.md").read_text()
    assert "## Approximate joint training vs alternating (paper sec. 3.2)" in report
    assert "| approximate joint training | " in report and "| shared (alternating, 4 steps) | " in report
    summary = json.loads((repo / "metrics/ablation_report.json").read_text())["joint"]
    assert summary["map_joint"] == pytest.approx(scores["mAP"])
    assert summary["wall_seconds_joint"] == joint["wall_seconds"]
    # MLflow: losses of every iteration, the wall time, the registered model with its mAP.
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo.resolve()}/mlflow.db")
    by_stage = {r.data.tags["stage"]: r for r in mlflow_runs(repo)}
    train_run, eval_run = by_stage["joint_train"], by_stage["joint_evaluate"]
    assert [m.step for m in client.get_metric_history(train_run.info.run_id, "train/total")] == [1, 2, 3, 4]
    assert {"train/rpn_cls", "train/det_reg", "wall_seconds"} <= set(train_run.data.metrics)
    versions = client.search_model_versions("name = 'faster-rcnn-alternating-joint'")
    assert len(versions) == 1 and eval_run.data.tags["registered_model"].endswith(f"/{versions[0].version}")
    assert float(versions[0].tags["mAP"]) == pytest.approx(scores["mAP"], abs=1e-5)
    # The detect CLI runs the joint checkpoint, from the file and from the registry.
    image = next(p for p in sorted((repo / "data/prepared").rglob("*")) if p.suffix in (".jpg", ".png"))
    tracking = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{repo.resolve()}/mlflow.db"}
    for source in ("outputs/joint_train/model.pt", f"models:/faster-rcnn-alternating-joint/{versions[0].version}"):
        detected = run([sys.executable, "-m", "model.detect", "--checkpoint", source, "--image", str(image),
                        "--score-threshold", "0.0"], repo, tracking)
        found = json.loads(detected.stdout)
        assert isinstance(found, list) and all(d["class"] in ("circle", "square", "triangle") for d in found)

    # `dvc repro joint_evaluate` runs the joint pair alone; killed after a checkpoint it resumes.
    set_param(repo, "train.joint.iterations", JOINT_ITERATIONS)
    set_param(repo, "train.joint.checkpoint_every", 2)
    resume_dir = repo / "outputs" / ".resume"
    proc = subprocess.Popen(["dvc", "repro", "joint_evaluate"], cwd=repo, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    saved = None
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            found_files = list(resume_dir.glob("joint_train-*.pt"))
            if found_files:
                saved = int(torch.load(found_files[0], weights_only=True)["train_state"]["iteration"])
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert saved is not None and 2 <= saved < JOINT_ITERATIONS
    rerun = run(["dvc", "repro", "joint_evaluate"], repo, env)
    assert sorted(ran_stages(rerun.stdout + rerun.stderr)) == ["joint_evaluate", "joint_train"]
    metrics = json.loads((repo / "metrics/joint_train.json").read_text())
    assert metrics["iterations"] == JOINT_ITERATIONS and saved <= metrics["resumed_from"] < JOINT_ITERATIONS
    assert not list(resume_dir.glob("joint_train-*"))
    runs = [r for r in mlflow_runs(repo) if r.data.tags["stage"] == "joint_train"
            and r.data.params.get("train.joint.iterations") == str(JOINT_ITERATIONS)]
    assert len(runs) == 1 and runs[0].data.tags.get("resumed") == "true" and runs[0].info.status == "FINISHED"
    steps = {m.step for m in client.get_metric_history(runs[0].info.run_id, "train/total")}
    assert steps == set(range(1, JOINT_ITERATIONS + 1))
