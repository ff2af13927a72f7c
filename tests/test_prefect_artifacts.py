"""The pipeline flow's results as Prefect artifacts (flows/artifacts.py), on a real test server."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.artifacts import REPORT_KEY, SUMMARY_KEY, headline_rows, publish_results
from tasks import layout


def test_headline_rows_keep_the_files_order() -> None:
    assert headline_rows({"mAP": 0.5, "train_seconds": 12.0}) == [
        {"number": "mAP", "value": 0.5}, {"number": "train_seconds", "value": 12.0}]


def test_flow_run_gets_the_table_and_the_report(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.context import get_run_context
    from prefect.settings import PREFECT_HOME, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    (tmp_path / layout.METRICS).mkdir()
    (tmp_path / layout.metrics("summary")).write_text(json.dumps({"mAP": 0.25, "signs_agree": 9}))

    @flow
    def publishing(root: str) -> tuple[list[str], str]:
        return publish_results(root), str(get_run_context().flow_run.id)

    with temporary_settings({PREFECT_HOME: str(tmp_path_factory.mktemp("prefect-home"))}):
        with prefect_test_harness(server_startup_timeout=90):
            partial, _ = publishing(str(tmp_path))  # no report yet: only the table
            (tmp_path / layout.REPORTS).mkdir()
            (tmp_path / layout.report("ablations.md")).write_text("# Ablations\n\n| row | mAP |\n")
            created, run_id = publishing(str(tmp_path))
            with get_client(sync_client=True) as client:
                artifacts = client.read_artifacts(
                    artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    assert partial == [SUMMARY_KEY] and created == [SUMMARY_KEY, REPORT_KEY]
    by_key = {a.key: a for a in artifacts}
    assert set(by_key) == {SUMMARY_KEY, REPORT_KEY}
    assert by_key[SUMMARY_KEY].type == "table" and "signs_agree" in str(by_key[SUMMARY_KEY].data)
    assert by_key[REPORT_KEY].type == "markdown" and by_key[REPORT_KEY].data.startswith("# Ablations")
