"""``python -m tasks.seed_report``: one ablation table from several seeds' reports.

Each run of the pipeline that differs only in ``pipeline.seed`` writes its own report.
This command reads several (``ablations.csv`` paths, or DVC experiment names, whose
``metrics/ablation_report.json`` it takes from the experiment's commit), combines them
with :func:`tasks.noise.combine_seeds` (mean, spread, "within noise" verdicts) and writes
``reports/ablations_seeds.md`` and ``.csv``::

    dvc exp run --queue -S pipeline.seed=1 && dvc exp run --queue -S pipeline.seed=2
    dvc queue start -j 1 && dvc queue status          # wait until both are done
    python -m tasks.seed_report --exp workspace <exp-name-1> <exp-name-2>

``workspace`` is the current checkout's own report. ``--metrics DIR ...`` reads runs'
``metrics`` folders (each row's ``ablations/<row>.json``) instead: runs that scored only
some of the rows (``dvc repro ablation@<row> ...``) then count for the rows they have, and
``--csv`` takes ``ablations.csv`` files; the three mix. Exit codes: 0 written, 1 a report
could not be read (the message names it), 2 usage errors.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from tasks import layout
from model.ablations import ALL_ROWS
from tasks.ablation_report import build_ablation_table, read_report_csv, to_markdown
from tasks.atomic import write_text
from tasks.noise import combine_seeds, verdict_counts, with_verdicts

OUT_FILES = {"markdown": "ablations_seeds.md", "csv": "ablations_seeds.csv"}


def _experiment_ref(name: str) -> str:
    """The git ref of DVC experiment ``name`` (``refs/exps/.../<name>``), or ``name`` itself
    when it is already a commit or ref git knows."""
    refs = subprocess.run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"],
                          capture_output=True, text=True, check=False).stdout.split()
    matches = [ref for ref in refs if ref.rsplit("/", 1)[-1] == name]
    if len(matches) > 1:
        raise ValueError(f"experiment name {name!r} is ambiguous: {matches}")
    return matches[0] if matches else name


def report_from_summary(summary: dict, where: str) -> pd.DataFrame:
    """The ablation table rebuilt from a run's ``metrics/ablation_report.json`` (its ``our_map``)."""
    try:
        ours = {str(k): float(v) for k, v in summary["our_map"].items()}
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ValueError(f"{where}: not an ablation report summary ({error})") from error
    return with_verdicts(build_ablation_table(ours, rows=ALL_ROWS, unit="percent"))


def experiment_report(name: str) -> pd.DataFrame:
    """The ablation table of DVC experiment ``name`` (``workspace``: the checkout's own run).

    Read from ``metrics/ablation_report.json``, which experiments commit (``reports/`` is
    git-ignored, so an experiment's ``ablations.csv`` is not in its commit).
    """
    path = layout.metrics("ablation_report")
    if name == "workspace":
        try:
            return report_from_summary(json.loads(path.read_text(encoding="utf-8")), str(path))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no ablation report in the workspace (run dvc repro)") from None
    ref = _experiment_ref(name)
    shown = subprocess.run(["git", "show", f"{ref}:{path.as_posix()}"], capture_output=True, text=True)
    if shown.returncode != 0:
        raise FileNotFoundError(f"experiment {name!r}: no {path} in its commit ({shown.stderr.strip()})")
    return report_from_summary(json.loads(shown.stdout), f"experiment {name!r}: {path}")


def metrics_report(folder: Path) -> pd.DataFrame:
    """The ablation table of the rows a run scored: ``folder/ablations/<row>.json`` (its
    ``mAP``); rows without a file are NaN (``build_ablation_table``)."""
    ours: dict[str, float] = {}
    for row in ALL_ROWS:
        path = folder / "ablations" / f"{row.key}.json"
        if path.exists():
            try:
                ours[row.key] = float(json.loads(path.read_text(encoding="utf-8"))["mAP"])
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(f"{path}: not an ablation row's metrics ({error})") from error
    if not ours:
        raise FileNotFoundError(f"{folder}: no ablation row metrics (ablations/<row>.json)")
    return with_verdicts(build_ablation_table(ours, rows=ALL_ROWS, unit="fraction"))


def combined_report(tables: Sequence[pd.DataFrame], labels: Sequence[str], out_dir: Path) -> dict[str, Path]:
    """Write the combined table (Markdown and CSV) into ``out_dir``; returns the paths."""
    combined = combine_seeds(tables)
    counts = verdict_counts(combined)
    paths = {kind: out_dir / name for kind, name in OUT_FILES.items()}
    text = (
        f"# Ablations over {len(tables)} seeds ({', '.join(labels)})\n\n" + to_markdown(combined)
        + f"\nMeans over the runs; spreads are sample standard deviations over runs; a change smaller than"
        f" its spread is \"within noise\" (`tasks/noise.py`). Verdicts: "
        + ", ".join(f"{name} {count}" for name, count in counts.items()) + ".\n"
    )
    write_text(paths["markdown"], text)
    write_text(paths["csv"], combined.to_csv(index=True))
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.seed_report", description=__doc__.splitlines()[0])
    parser.add_argument("--exp", nargs="+", default=[], metavar="NAME", help="DVC experiment names (or 'workspace')")
    parser.add_argument("--csv", nargs="+", default=[], type=Path, metavar="PATH", help="ablations.csv files")
    parser.add_argument("--metrics", nargs="+", default=[], type=Path, metavar="DIR",
                        help="runs' metrics folders (rows they did not score count as missing)")
    parser.add_argument("--out", type=Path, default=layout.REPORTS, help="folder for ablations_seeds.md / .csv")
    args = parser.parse_args(argv)
    if not (args.exp or args.csv or args.metrics):
        parser.error("give runs with --exp, --csv and/or --metrics")
    labels = [*args.exp, *(str(p) for p in args.csv), *(str(p) for p in args.metrics)]
    try:
        tables = [*(experiment_report(n) for n in args.exp), *(read_report_csv(p) for p in args.csv),
                  *(metrics_report(p) for p in args.metrics)]
        paths = combined_report(tables, labels, args.out)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(paths["markdown"].read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
