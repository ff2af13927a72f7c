"""The report's sections beyond the ablation table: the paper's claims made checkable.

- :func:`headline_table`: SS + Fast R-CNN (SS train, SS test 2000) against RPN + Fast R-CNN,
  shared and unshared, 300 proposals (the paper: 58.7 vs 59.9 / 58.7);
- :func:`recall_table_at`: recall at 300 proposals at IoU 0.5 / 0.7 / 0.9 per proposal
  method, beside the recall at 2000 and how much is lost going from 2000 to 300 (the paper:
  RPN holds up as the count drops, SS falls);
- :func:`timing_table`: the paper's Table 5 (ms per image: conv, proposal, region-wise,
  total, fps) measured here, beside the paper's rows.

Each builder is plain (DataFrames in, DataFrames out); :func:`sections_markdown` renders
what is available, so a report of a partial run still shows the parts it has.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from model.ablations import ALL_ROWS
from tasks.noise import verdict

#: (row key of the ablation table, label) of the headline comparison, SS first; each row's
#: paper number is its ``AblationRow.paper_map`` (``ss_test_2000`` carries the paper's
#: "SS train, SS test" 58.7).
HEADLINE_ROWS: tuple[tuple[str, str], ...] = (
    ("ss_test_2000", "SS + Fast R-CNN (SS 2000 train and test)"),
    ("shared", "RPN + Fast R-CNN, shared convs (300)"),
    ("unshared", "RPN + Fast R-CNN, unshared (300)"),
)
#: Proposal methods of the recall table (``tasks.proposal_recall`` column prefixes) and labels.
RECALL_METHODS: tuple[tuple[str, str], ...] = (
    ("ss", "selective search"),
    ("rpn_shared", "RPN, shared (step 3)"),
    ("rpn_unshared", "RPN, unshared (step 1)"),
    ("rpn_strong", "RPN, stronger backbone"),
)
RECALL_IOUS = (0.5, 0.7, 0.9)


def headline_table(ours: Mapping[str, float], spread: Mapping[str, float] | None = None) -> pd.DataFrame:
    """One line per system of ``HEADLINE_ROWS``; ``ours``: row key -> our mAP in percent.

    ``spread``: row key -> the seed-to-seed spread of that system's difference to SS (points;
    from :func:`tasks.noise.combine_seeds`), used by the "within noise" rule; None for one run.
    """
    ss_key = HEADLINE_ROWS[0][0]
    paper_of = {row.key: float(row.paper_map) for row in ALL_ROWS}
    lines = []
    for key, label in HEADLINE_ROWS:
        paper = paper_of[key]
        our = float(ours.get(key, math.nan))
        paper_vs_ss = paper - paper_of[ss_key] if key != ss_key else math.nan
        ours_vs_ss = our - float(ours.get(ss_key, math.nan)) if key != ss_key else math.nan
        noise = (spread or {}).get(key, math.nan)
        lines.append({
            "system": label,
            "paper mAP": paper,
            "our mAP (%)": our,
            "paper minus SS": paper_vs_ss,
            "ours minus SS": ours_vs_ss,
            "verdict": verdict(paper_vs_ss, ours_vs_ss, noise) if key != ss_key else "n/a",
        })
    return pd.DataFrame(lines, index=pd.Index([k for k, _ in HEADLINE_ROWS], name="key"))


def recall_table_at(recall: pd.DataFrame, top_n: int = 300, reference_n: int = 2000,
                    ious: Sequence[float] = RECALL_IOUS) -> pd.DataFrame:
    """Recall at ``top_n`` proposals per method at ``ious``, and what is lost from ``reference_n``.

    ``recall``: ``reports/recall_vs_iou.csv`` as read by pandas (column ``iou``, then
    ``<method>_<N>``). ``loss 2000->300`` is the recall at ``reference_n`` minus the recall at
    ``top_n``, averaged over ``ious``: small when a method's best boxes come first.
    """
    by_iou = recall.set_index(recall["iou"].round(4))
    lines = []
    for method, label in RECALL_METHODS:
        column, reference = f"{method}_{top_n}", f"{method}_{reference_n}"
        if column not in by_iou.columns:
            continue
        line: dict[str, Any] = {"method": label}
        losses = []
        for iou in ious:
            at = float(by_iou[column].get(round(iou, 4), math.nan))
            line[f"recall@{iou:g} ({top_n})"] = at
            if reference in by_iou.columns:
                losses.append(float(by_iou[reference].get(round(iou, 4), math.nan)) - at)
        line[f"loss {reference_n}->{top_n}"] = sum(losses) / len(losses) if losses else math.nan
        lines.append(line)
    return pd.DataFrame(lines, index=pd.Index([m for m, _ in RECALL_METHODS if f"{m}_{top_n}" in by_iou.columns],
                                              name="method_key"))


def recall_findings(table: pd.DataFrame, top_n: int = 300) -> list[str]:
    """The paper's two recall claims, checked on ``recall_table_at``'s output (one line each)."""
    findings = []
    if "ss" not in table.index:
        return findings
    for rpn in ("rpn_shared", "rpn_unshared"):
        if rpn not in table.index:
            continue
        at = {iou: (table.loc[rpn, f"recall@{iou:g} ({top_n})"], table.loc["ss", f"recall@{iou:g} ({top_n})"])
              for iou in (0.5, 0.7)}
        ahead = all(r >= s for r, s in at.values())
        findings.append(
            f"{table.loc[rpn, 'method']} vs selective search at {top_n} proposals, IoU 0.5 / 0.7: "
            + " / ".join(f"{r:.3f} vs {s:.3f}" for r, s in at.values())
            + (" -> RPN ahead, as in the paper" if ahead else " -> RPN NOT ahead (the paper: RPN ahead)")
        )
    loss = [c for c in table.columns if c.startswith("loss ")]
    if loss and "rpn_shared" in table.index:
        r, s = table.loc["rpn_shared", loss[0]], table.loc["ss", loss[0]]
        findings.append(
            f"recall lost from 2000 to {top_n} proposals (mean over IoU {', '.join(f'{i:g}' for i in RECALL_IOUS)}): "
            f"RPN shared {r:.3f}, selective search {s:.3f}"
            + (" -> RPN holds up better, as in the paper" if r < s else " -> RPN does NOT hold up better")
        )
    if {"rpn_shared", "rpn_unshared"} <= set(table.index):
        column = f"recall@0.7 ({top_n})"
        three, one = table.loc["rpn_shared", column], table.loc["rpn_unshared", column]
        if three > one:
            verdict_text = " -> fine-tuning on the detector's features helps, as in the paper"
        elif three == one:
            verdict_text = " -> a tie (the paper: step 3 is better)"
        else:
            verdict_text = " -> step 3 is NOT better (the paper: it is)"
        findings.append(f"step-3 RPN vs step-1 RPN, recall at IoU 0.7 ({top_n}): {three:.3f} vs {one:.3f}" + verdict_text)
    return findings


def timing_table(timing: Mapping[str, Any]) -> pd.DataFrame:
    """Ours (``metrics/timing.json``) and the paper's Table 5, ms per image and fps."""
    from tasks.timing import PAPER_TABLE5

    device = str(timing.get("device", "this machine"))
    lines = []
    for key, label in (("ss", "SS + Fast R-CNN"), ("rpn", "RPN + Fast R-CNN")):
        if key in timing:
            t = timing[key]
            lines.append({"system": f"ours: {label}", "device": device, "conv_ms": t["conv_ms"],
                          "proposal_ms": t["proposal_ms"], "region_ms": t["region_ms"],
                          "total_ms": t["total_ms"], "fps": t["fps"]})
    for row in PAPER_TABLE5:
        lines.append({**{k: row[k] for k in ("conv_ms", "proposal_ms", "region_ms", "total_ms", "fps")},
                      "system": f"paper: {row['system']}", "device": "K40 GPU (SS on a CPU)"})
    columns = ["system", "device", "conv_ms", "proposal_ms", "region_ms", "total_ms", "fps"]
    return pd.DataFrame(lines, columns=columns)


def _cell(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value).replace("|", "\\|")


def frame_markdown(table: pd.DataFrame, digits: int = 1) -> str:
    """A GitHub Markdown table (the index is left out: every table here has a label column)."""
    header = "| " + " | ".join(str(c) for c in table.columns) + " |"
    rule = "|" + "|".join("---" if table[c].dtype == object else "---:" for c in table.columns) + "|"
    body = ["| " + " | ".join(_cell(v, digits) for v in line) + " |" for line in table.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def sections_markdown(headline: pd.DataFrame | None, recall: pd.DataFrame | None,
                      timing: Mapping[str, Any] | None) -> str:
    """The report's extra sections in Markdown; a missing part is named, not silently left out."""
    parts = []
    if headline is not None:
        parts.append("## Headline: selective search vs the RPN (paper Table 2)\n\n" + frame_markdown(headline))
    if recall is not None and len(recall):
        text = "## Recall at 300 proposals (paper Figure 4)\n\n" + frame_markdown(recall, digits=3)
        findings = recall_findings(recall)
        if findings:
            text += "\n" + "".join(f"- {line}\n" for line in findings)
        parts.append(text)
    else:
        parts.append("## Recall at 300 proposals\n\nnot available: run stage proposal_recall\n")
    if timing is not None:
        text = "## Timing per image (paper Table 5)\n\n" + frame_markdown(timing_table(timing))
        ratio = timing.get("proposal_ratio_ss_over_rpn")
        if ratio:
            text += (f"\nProposal step: selective search takes {ratio:.0f}x the RPN's time here "
                     f"(paper: 1510 / 10 ms = 151x); whole system {timing.get('total_ratio_ss_over_rpn', math.nan):.1f}x "
                     f"(paper: 1830 / 198 = 9.2x). Measured on {timing.get('images')} test images.\n")
        parts.append(text)
    else:
        parts.append("## Timing per image\n\nnot available: run stage timing\n")
    return "\n".join(parts)
