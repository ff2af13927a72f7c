"""The pipeline's result as Prefect artifacts of its flow run, so the Prefect UI shows it.

After the stages ran, ``publish_results`` turns two files into artifacts of the run:

- ``headline-numbers`` (a table): ``metrics/summary.json``, one row per number;
- ``ablation-report`` (Markdown): ``reports/ablations.md``, the ablation table beside the
  paper's numbers with its headline, recall and timing sections.

A file a partial run did not produce (``stages=[...]``) is skipped, saying so. The task
retries: its only failure mode besides a missing file is the Prefect API being briefly
unreachable, which is transient. The stages themselves do not retry: they fail on bad
input or a bug, and a re-run resumes training where it stopped (``tasks.resume``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks import layout

SUMMARY_KEY = "headline-numbers"
REPORT_KEY = "ablation-report"


def headline_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """``metrics/summary.json`` as table rows ``{"number", "value"}``, in the file's order."""
    return [{"number": key, "value": value} for key, value in summary.items()]


@task(name="publish_results", retries=2, retry_delay_seconds=5)
def publish_results(root: str) -> list[str]:
    """Publish the headline numbers and the ablation report of the repository at ``root``;
    returns the artifact keys created."""
    base = Path(root)
    summary_file, report_file = base / layout.metrics("summary"), base / layout.report("ablations.md")
    created: list[str] = []
    if summary_file.is_file():
        summary = json.loads(summary_file.read_text(encoding="utf-8"))
        create_table_artifact(headline_rows(summary), key=SUMMARY_KEY,
                              description=f"Headline numbers of this execution ({layout.metrics('summary')})")
        created.append(SUMMARY_KEY)
    if report_file.is_file():
        create_markdown_artifact(report_file.read_text(encoding="utf-8"), key=REPORT_KEY,
                                 description=f"Ablation report ({layout.report('ablations.md')})")
        created.append(REPORT_KEY)
    missing = [str(p.relative_to(base)) for p in (summary_file, report_file) if not p.is_file()]
    if missing:
        print(f"not published (not produced by this run): {', '.join(missing)}")
    return created
