"""dvc.yaml, written from the stage registry (``tasks.stages``): ``python -m flows.dvc_yaml``.

``--check`` exits 1 when the committed dvc.yaml differs from what the registry gives
(tests/test_stage_registry.py runs the same comparison). Code dependencies are the
import closure of the stage runner and the stage's entry module (``tasks.code_deps``),
folders written once where all of their Python files are needed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tasks.code_deps import closure, compress
from tasks import layout
from tasks.stages import REGISTRY, RUNNER_MODULE, RUNNER_SCRIPT, Stage, StageGroup

ROOT = Path(__file__).resolve().parent.parent
DVC_YAML = ROOT / "dvc.yaml"

HEADER = """\
# GENERATED from tasks/stages.py by `python -m flows.dvc_yaml`: edit the registry, not this file
# (tests/test_stage_registry.py fails when the two differ).
#
# The paper's four-step alternating training (Ren et al. 2015, sec. 3.2) and its ablations
# as DVC stages. Every stage runs one Prefect flow (flows/stage.py), which reads params.yaml
# restricted to the keys listed under `params:` and logs one MLflow run. Code deps are the
# Python files the stage imports (tasks/code_deps.py). Profiles: conf/ (Hydra), e.g.
#   dvc exp run -S data=tiny -S train=tiny
# In-progress checkpoints live in outputs/.resume (not an output: DVC deletes outputs
# before re-running a stage), so a killed training stage resumes; see tasks/resume.py.
stages:
"""
FOOTER = """
# Data-series plot of the recall table (the PNG above draws the same numbers per panel).
plots:
  - reports/recall_vs_iou.csv:
      x: iou
      y:
        reports/recall_vs_iou.csv: [ss_300, rpn_shared_300, rpn_unshared_300, rpn_strong_300,
                                    ss_2000, rpn_shared_2000, rpn_unshared_2000, rpn_strong_2000]
      x_label: IoU
      y_label: recall
      title: Recall vs IoU on the test split (300 and 2000 proposals per image)
"""


def code_deps(entry: Stage | StageGroup, root: Path = ROOT) -> list[str]:
    """The stage's code: the runner script, then the import closure, compressed."""
    module = entry.entry_module if isinstance(entry, Stage) else entry.stage(next(iter(entry.items))).entry_module
    return [RUNNER_SCRIPT, *compress(root, closure(root, [RUNNER_MODULE, module]))]


def _quoted(text: str) -> str:
    return json.dumps(text)


def _flow_list(key: str, values: list[str], indent: str, width: int = 116) -> list[str]:
    """``key: [a, b, ...]`` wrapped under the first item (YAML flow sequence)."""
    if not values:
        return []
    items = [f'"{v}"' if "${" in v else v for v in values]
    head = f"{indent}{key}: ["
    lines, line = [], head
    for i, item in enumerate(items):
        piece = item + ("]" if i == len(items) - 1 else ",")
        if len(line) + len(piece) + 1 > width and line.strip() != head.strip():
            lines.append(line.rstrip())
            line = " " * len(head)
        line += piece + " "
    lines.append(line.rstrip())
    return lines


def _list(key: str, values: list[str], indent: str, uncached: bool = False) -> list[str]:
    if not values:
        return []
    lines = [f"{indent}{key}:"]
    for value in values:
        lines.append(f"{indent}  - {value}:" if uncached else f"{indent}  - {value}")
        if uncached:
            lines.append(f"{indent}      cache: false")
    return lines


def _body(name: str, desc: str, params: tuple[str, ...], deps: list[str], outs: tuple[str, ...],
          reports: tuple[str, ...], metrics: str, plots: tuple[str, ...], indent: str, headline: bool = False) -> list[str]:
    """A stage's keys. Its metrics file goes under ``metrics:`` only for the headline stage;
    otherwise it is one more uncached out, so ``dvc metrics show`` / ``dvc exp show`` stay narrow."""
    lines = [f"{indent}desc: {_quoted(desc)}", f"{indent}cmd: sh {RUNNER_SCRIPT} {name}"]
    lines += _flow_list("deps", deps, indent)
    lines += _flow_list("params", list(params), indent)
    uncached = (*reports, *(() if headline else (metrics,)))
    if outs or uncached:
        lines.append(f"{indent}outs:")
        lines += [f"{indent}  - {o}" for o in outs]
        for report in uncached:
            lines += [f"{indent}  - {report}:", f"{indent}      cache: false"]
    if headline:
        lines += _list("metrics", [metrics], indent, uncached=True)
    lines += _list("plots", list(plots), indent, uncached=True)
    return lines


def render(root: Path = ROOT) -> str:
    lines: list[str] = []
    for entry in REGISTRY:
        if isinstance(entry, Stage):
            if entry.name == "ss_proposals":
                lines.append("  # ---------------------------------------------------------------- ablations (tasks/ablations.py)")
            lines.append(f"  {entry.name}:")
            lines += _body(entry.name, entry.desc, entry.params, [*entry.inputs, *code_deps(entry, root)], entry.outs,
                           entry.reports, entry.metrics, entry.plots, "    ", entry.headline)
            continue
        lines.append(f"  {entry.name}:")
        lines += [f"    # {line}" for line in entry.comment.splitlines()]
        lines.append("    foreach:")
        for key, item in entry.items.items():
            lines.append(f"      {key}:")
            lines += [f"        {field}: {value}" for field, value in item.items()]
        lines.append("    do:")
        lines += _body(f"{entry.name}@${{key}}", entry.desc, entry.params, [*entry.inputs, *code_deps(entry, root)],
                       (), (), str(layout.row_metrics("${key}")), (), "      ")
    return HEADER + "\n".join(lines) + "\n" + FOOTER


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.dvc_yaml", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if dvc.yaml is not what the registry gives")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if DVC_YAML.read_text(encoding="utf-8") != text:
            print("dvc.yaml is out of date: run `python -m flows.dvc_yaml`", file=sys.stderr)
            return 1
        return 0
    DVC_YAML.write_text(text, encoding="utf-8")
    print(f"wrote {DVC_YAML.relative_to(ROOT)} ({text.count(chr(10))} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
