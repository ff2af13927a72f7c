"""Seed-to-seed noise in the ablation report, and the rule that decides a row's verdict.

The paper quotes five runs of its ZF baseline (59.5-60.4 mAP): a change smaller than that
spread is not a finding. With several runs of the pipeline that differ only in their
training seeds (``pipeline.seed``), :func:`combine_seeds` gives each row its mean mAP, the
spread of its mAP, and the spread of its *change* against its baseline row, measured
pairwise (run by run, so noise common to a row and its baseline cancels).

The verdict rule, written once (:func:`verdict`):

- ``n/a`` when the paper has no change for the row or ours is missing;
- ``within noise`` when there is a spread (two runs or more) and our mean change is
  smaller in size than it (``|change| < spread``): neither agreeing nor disagreeing;
- otherwise ``agrees`` when the signs are equal (0 agrees only with 0), ``disagrees`` if not.

The spread is the sample standard deviation (``ddof=1``) of the per-run changes.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

VERDICTS = ("agrees", "disagrees", "within noise", "n/a")


def _sign(value: float) -> int:
    return (value > 0) - (value < 0)


def verdict(paper_change: float, our_change: float, spread: float = math.nan) -> str:
    """One of ``VERDICTS`` for a row (see the module docstring)."""
    if math.isnan(paper_change) or math.isnan(our_change):
        return "n/a"
    if not math.isnan(spread) and abs(our_change) < spread:
        return "within noise"
    return "agrees" if _sign(paper_change) == _sign(our_change) else "disagrees"


def with_verdicts(table: pd.DataFrame, change_spread: pd.Series | None = None) -> pd.DataFrame:
    """``table`` (``build_ablation_table``'s columns) with a ``verdict`` column added."""
    out = table.copy()
    spread = change_spread if change_spread is not None else pd.Series(math.nan, index=table.index)
    out["verdict"] = [
        verdict(float(line["paper change"]), float(line["our change"]), float(spread.get(key, math.nan)))
        for key, line in table.iterrows()
    ]
    return out


def combine_seeds(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """One table from several runs' ablation tables (same rows; ``build_ablation_table`` output).

    ``our mAP (%)`` and ``our change`` become means over the runs; ``mAP spread`` and
    ``change spread`` are the sample standard deviations over runs (NaN for one run);
    ``runs`` counts the runs with a value; ``signs agree`` and ``verdict`` follow the means.
    """
    if not tables:
        raise ValueError("combine_seeds needs at least one table")
    index = tables[0].index
    for number, table in enumerate(tables[1:], start=2):
        if list(table.index) != list(index):
            raise ValueError(f"run {number}'s report has other rows than run 1's: {sorted(set(table.index) ^ set(index))}")
    maps = pd.concat([t["our mAP (%)"] for t in tables], axis=1)
    changes = pd.concat([t["our change"] for t in tables], axis=1)
    out = tables[0].drop(columns=["verdict"], errors="ignore").copy()
    out["our mAP (%)"] = maps.mean(axis=1)
    out["our change"] = changes.mean(axis=1)
    out["mAP spread"] = maps.std(axis=1, ddof=1)
    out["change spread"] = changes.std(axis=1, ddof=1)
    out["runs"] = maps.notna().sum(axis=1).astype("int64")
    agree = [
        pd.NA if math.isnan(p) or math.isnan(o) else _sign(p) == _sign(o)
        for p, o in zip(out["paper change"].astype(float), out["our change"].astype(float))
    ]
    out["signs agree"] = pd.array(agree, dtype="boolean")
    return with_verdicts(out, out["change spread"])


def verdict_counts(table: pd.DataFrame) -> dict[str, int]:
    """How many rows have each verdict (every verdict named, zero included)."""
    counts = table["verdict"].value_counts()
    return {name: int(counts.get(name, 0)) for name in VERDICTS}
