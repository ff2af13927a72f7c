"""The ablation report: our mAP per ablation row beside the paper's, and whether the changes agree.

For each row of ``model.ablations.ALL_ROWS`` (the paper's table, then the proposal-count
sweep) the table gives the paper's mAP (NaN where the paper has none), the
paper's change against that row's baseline (``paper_baseline_key``: "shared" for unshared,
"unshared" for "SS train, RPN test" and the one-stage system, "SS train, RPN test" for the
rows from top-100 to stronger RPN), our mAP, our change against the same baseline row of
ours, and whether the two changes have the same sign.

Sign rule: ``sign`` is -1, 0 or +1, and the signs agree when they are equal; so a change of
exactly 0 agrees only with a change of exactly 0 (a tie is neither a gain nor a loss). No
tolerance is applied: the paper's numbers are given to 0.1 and ours are unrounded floats.
``signs agree`` is pandas' nullable boolean: NA when either change is missing (a row or its
baseline was not run, or the row is the study's baseline and has no change).

The builder functions are plain; ``ablation_report_task`` is the stage's Prefect task; MLflow is
imported only inside ``log_report``.
"""
from __future__ import annotations

import math
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from model.ablations import ABLATION_ROWS, ALL_ROWS, AblationRow, check_rows
from tasks import layout
from tasks.atomic import read_optional_json, write_json, write_text
from tasks.lazy_prefect import task
from tasks.noise import verdict_counts, with_verdicts
from tasks.plots import save_figure
from tasks.report_joint import joint_comparison, joint_markdown, joint_summary
from tasks.report_sections import headline_table, recall_table_at, sections_markdown
from tasks.settings import Settings

COLUMNS = ("row", "what changes", "paper mAP", "paper change", "our mAP (%)", "our change", "signs agree")
UNITS = ("fraction", "percent")
REPORT_FILES = {"markdown": "ablations.md", "csv": "ablations.csv", "png": "ablations.png"}


def to_percent(ours: Mapping[str, float], unit: str) -> dict[str, float]:
    """Our mAPs in percent. ``unit``: "fraction" (0..1) or "percent" (no guessing: a model
    whose every mAP is below 1 % would look like fractions)."""
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
    values: dict[str, float] = {}
    for key, value in ours.items():
        number = float(value)
        if not math.isnan(number) and not 0.0 <= number <= 100.0:
            raise ValueError(f"mAP of row {key!r} is {number}, outside 0..100")
        values[key] = number
    if unit == "fraction":
        above = {k: v for k, v in values.items() if v > 1.0}
        if above:
            raise ValueError(f"unit 'fraction' but mAP above 1 for rows {sorted(above)}")
        return {k: v * 100.0 for k, v in values.items()}
    return values


def sign(value: float) -> int:
    """-1, 0 or +1."""
    return (value > 0) - (value < 0)


def signs_agree(paper_change: float, our_change: float) -> bool | None:
    """True when both changes have the same sign (0 agrees only with 0); None if either is NaN."""
    if math.isnan(paper_change) or math.isnan(our_change):
        return None
    return sign(paper_change) == sign(our_change)


def build_ablation_table(
    ours: Mapping[str, float],
    rows: Sequence[AblationRow] = ABLATION_ROWS,
    unit: str = "fraction",
) -> pd.DataFrame:
    """One line per row of ``rows`` (index: the row key), columns ``COLUMNS``.

    ``ours`` maps row keys to our mAP (see ``to_percent`` for ``unit``); rows missing from it
    get NaN, and so do changes whose row or baseline is missing. Keys of ``ours`` that are
    not rows are an error (a typo would otherwise drop a result silently).
    """
    check_rows(rows)
    keys = [row.key for row in rows]
    unknown = sorted(set(ours) - set(keys))
    if unknown:
        raise ValueError(f"results for unknown ablation rows {unknown}; rows are {keys}")
    ours_pct = to_percent(ours, unit)
    paper = {row.key: float(row.paper_map) for row in rows}

    lines = []
    for row in rows:
        base = row.paper_baseline_key
        paper_change = paper[row.key] - paper[base] if base else math.nan
        our_map = ours_pct.get(row.key, math.nan)
        our_change = our_map - ours_pct.get(base, math.nan) if base else math.nan
        agree = signs_agree(paper_change, our_change)
        lines.append(
            {
                "row": row.label,
                "what changes": row.description,
                "paper mAP": paper[row.key],
                "paper change": paper_change,
                "our mAP (%)": our_map,
                "our change": our_change,
                "signs agree": pd.NA if agree is None else agree,
            }
        )
    table = pd.DataFrame(lines, index=pd.Index(keys, name="key"), columns=list(COLUMNS))
    for column in ("paper mAP", "paper change", "our mAP (%)", "our change"):
        table[column] = table[column].astype("float64")
    table["signs agree"] = table["signs agree"].astype("boolean")
    return table


def _fmt(value: object, signed: bool = False) -> str:
    if value is pd.NA or value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        text = f"{float(value):+.1f}" if signed else f"{float(value):.1f}"
        return "0.0" if text in ("+0.0", "-0.0") else text
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub Markdown table of ``table`` (written here: ``tabulate`` is not a dependency)."""
    signed = {"paper change", "our change"}
    table = table.drop(columns=["signs agree"]) if "verdict" in table.columns else table
    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---" if c in ("row", "what changes") else "---:" for c in table.columns) + "|"
    body = [
        "| " + " | ".join(_fmt(line[c], signed=c in signed) for c in table.columns) + " |"
        for _, line in table.iterrows()
    ]
    return "\n".join([header, rule, *body]) + "\n"


def _plot(table: pd.DataFrame, path: Path) -> None:
    import matplotlib.pyplot as plt

    labels = list(table["row"])
    positions = np.arange(len(labels))
    width = 0.4
    paper = table["paper mAP"].to_numpy(dtype=float)
    ours = table["our mAP (%)"].to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(labels) + 2.0), 4.5))
    try:
        ax.bar(positions - width / 2, paper, width, label="paper (ZF, VOC07)", color="#8c8c8c")
        ax.bar(positions + width / 2, np.nan_to_num(ours, nan=0.0), width, label="ours", color="#1f77b4")
        for x, value in zip(positions, ours):
            if np.isnan(value):
                ax.text(x + width / 2, 1.0, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
        ax.set_xticks(positions)
        ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel("mAP (%)")
        ax.set_ylim(0, 100)
        ax.set_title("Ablations: paper vs ours")
        ax.legend(loc="upper right", fontsize=8)
        fig.tight_layout()
    except BaseException:
        plt.close(fig)
        raise
    save_figure(fig, path)


def write_report(table: pd.DataFrame, out_dir: str | Path, sections: str = "") -> dict[str, Path]:
    """Write ``ablations.md``, ``ablations.csv`` and ``ablations.png`` into ``out_dir``,
    each atomically; returns ``{"markdown", "csv", "png"}`` -> path. ``sections``: more
    Markdown for ``ablations.md`` (``tasks.report_sections``)."""
    out = Path(out_dir)
    paths = {kind: out / name for kind, name in REPORT_FILES.items()}
    markdown = "# Ablations (paper: ZF net, PASCAL VOC 2007 test)\n\n" + to_markdown(table)
    markdown += (
        "\nChanges are against each row's baseline row (see `model/ablations.py`); "
        "signs agree when both changes have the same sign, 0 agreeing only with 0. "
        "Verdict: `tasks/noise.py` (with several seeds, a change smaller than its spread is "
        "\"within noise\").\n"
    )
    if sections:
        markdown += "\n" + sections
    write_text(paths["markdown"], markdown)
    write_text(paths["csv"], table.to_csv(index=True))
    _plot(table, paths["png"])
    return paths


def read_report_csv(path: str | Path) -> pd.DataFrame:
    """Read back ``ablations.csv`` with the dtypes ``build_ablation_table`` gives."""
    table = pd.read_csv(path, index_col="key")
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: not an ablation report, columns {missing} missing")
    table["signs agree"] = table["signs agree"].astype("boolean")
    return table


def log_report(run: Any, table: pd.DataFrame, paths: Mapping[str, Path]) -> None:
    """Into the stage's MLflow run (``tasks.tracking.StageRun``): our mAP and change per row,
    the fraction of rows whose signs agree, the report files and the table itself."""
    import mlflow

    metrics: dict[str, float] = {}
    for key, line in table.iterrows():
        for column, name in (("our mAP (%)", "map"), ("our change", "change")):
            metrics[f"ablation_{key}_{name}"] = float(line[column])  # NaN is left out when logged
    agree = table["signs agree"].dropna()
    if len(agree):
        metrics["ablation_signs_agree_fraction"] = float(agree.astype(bool).mean())
    run.log_metrics(metrics)
    for path in paths.values():
        run.log_artifact(path, "ablations")
    mlflow.log_table(table.reset_index(), artifact_file="ablations/ablations_table.json")


# ----------------------------------------------------------------------------- the stage
STAGE = "ablation_report"


def read_row_results(rows: Sequence[AblationRow] = ALL_ROWS) -> dict[str, float]:
    """Our mAP (fraction) per row from ``metrics/ablations/<key>.json``; a missing or
    unreadable file is an error naming it (every row stage runs before the report)."""
    ours: dict[str, float] = {}
    for row in rows:
        path = layout.row_metrics(row.key)
        try:
            ours[row.key] = float(json.loads(path.read_text(encoding="utf-8"))["mAP"])
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no result for ablation row {row.key!r}; run stage ablation@{row.key}") from None
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}: not an ablation row result ({error})") from error
    return ours


def report_summary(table: pd.DataFrame) -> dict[str, object]:
    """Metrics of the report: rows compared, rows whose signs agree, and which disagree."""
    agree = table["signs agree"].dropna().astype(bool)
    summary: dict[str, object] = {
        "rows": int(len(table)),
        "rows_compared": int(len(agree)),
        "signs_agree": int(agree.sum()),
        "signs_disagree_rows": sorted(str(k) for k in agree.index[~agree]),
        "our_map": {str(k): float(v) for k, v in table["our mAP (%)"].items() if not math.isnan(float(v))},
    }
    if "verdict" in table.columns:
        summary["verdicts"] = verdict_counts(table)
    return summary


def _finite(value: object) -> float | None:
    """A float for JSON, None where it is missing (JSON has no NaN)."""
    number = float(value)  # type: ignore[arg-type]
    return None if math.isnan(number) else number


def report_sections(table: pd.DataFrame) -> tuple[str, dict[str, object]]:
    """The headline, recall-at-300, timing and joint-training sections (Markdown) and their summary metrics."""
    headline = headline_table(table["our mAP (%)"].to_dict())
    recall_csv = layout.report("recall_vs_iou.csv")
    recall = recall_table_at(pd.read_csv(recall_csv)) if recall_csv.is_file() else None
    timing = read_optional_json(layout.metrics("timing"))
    summary: dict[str, object] = {
        "headline": {str(k): {"our_map": _finite(v["our mAP (%)"]), "verdict": str(v["verdict"])}
                     for k, v in headline.iterrows()},
    }
    if recall is not None:
        summary["recall_300"] = {str(k): {c: _finite(v) for c, v in line.items() if c != "method"}
                                 for k, line in recall.iterrows()}
    if timing is not None:
        summary["proposal_ratio_ss_over_rpn"] = timing.get("proposal_ratio_ss_over_rpn")
    joint = joint_comparison()
    return sections_markdown(headline, recall, timing) + "\n" + joint_markdown(joint), {**summary, **joint_summary(joint)}


def build_report(rows: Sequence[AblationRow] = ALL_ROWS) -> tuple[pd.DataFrame, dict[str, Path], dict[str, object]]:
    """The report stage's work: read the rows, write ``reports/ablations.*`` and its metrics."""
    table = with_verdicts(build_ablation_table(read_row_results(rows), rows=rows, unit="fraction"))
    sections, extra = report_sections(table)
    paths = write_report(table, layout.REPORTS, sections)
    summary = {**report_summary(table), **extra}
    write_json(layout.metrics(STAGE), summary)
    return table, paths, summary


@task(name="ablation_report")
def ablation_report_task(settings: Settings) -> dict[str, object]:
    """Prefect task: the report; printed, and logged to MLflow as metrics, artifacts and a table."""
    from tasks.tracking import stage_run

    with stage_run(STAGE, settings.tracking.experiment, settings) as run:
        table, paths, summary = build_report()
        log_report(run, table, paths)
        run.log_metrics({"rows_compared": summary["rows_compared"], "signs_agree": summary["signs_agree"]})
    print("\n" + paths["markdown"].read_text(encoding="utf-8"))
    print(f"{summary['signs_agree']} of {summary['rows_compared']} rows agree in sign with the paper"
          + (f"; disagree: {', '.join(summary['signs_disagree_rows'])}" if summary["signs_disagree_rows"] else ""))
    return summary
