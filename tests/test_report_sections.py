"""The report's verdict rule, seed combination, headline, recall-at-300 and timing sections."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from model.ablations import ABLATION_ROWS
from tasks.ablation_report import build_ablation_table
from tasks.noise import combine_seeds, verdict, verdict_counts, with_verdicts
from tasks.report_sections import headline_table, recall_findings, recall_table_at, sections_markdown, timing_table


def test_verdict_rule():
    assert verdict(-1.2, -3.0) == "agrees"
    assert verdict(-1.2, +0.5) == "disagrees"
    assert verdict(0.0, 0.0) == "agrees" and verdict(0.0, 0.1) == "disagrees"
    assert verdict(math.nan, 1.0) == "n/a" and verdict(1.0, math.nan) == "n/a"
    # A spread: a change smaller than it is neither agreeing nor disagreeing.
    assert verdict(-1.2, +0.5, spread=0.8) == "within noise"
    assert verdict(-1.2, -0.5, spread=0.8) == "within noise"
    assert verdict(-1.2, +0.9, spread=0.8) == "disagrees"
    assert verdict(-1.2, -0.8, spread=0.8) == "agrees"  # not smaller than the spread


def _table(shared, unshared):
    return build_ablation_table({"shared": shared, "unshared": unshared}, rows=ABLATION_ROWS[:2], unit="percent")


def test_combine_seeds_hand_worked():
    # Three runs; unshared - shared per run: -2, -1, +0.0 -> mean -1, sample std 1.
    runs = [_table(70.0, 68.0), _table(72.0, 71.0), _table(71.0, 71.0)]
    combined = combine_seeds(runs)
    line = combined.loc["unshared"]
    assert line["our mAP (%)"] == pytest.approx((68 + 71 + 71) / 3)
    assert line["our change"] == pytest.approx(-1.0)
    assert line["change spread"] == pytest.approx(1.0)
    assert line["mAP spread"] == pytest.approx(pd.Series([68.0, 71.0, 71.0]).std(ddof=1))
    assert line["runs"] == 3
    # |-1.0| is not smaller than the spread 1.0: the paper's -1.2 agrees.
    assert line["verdict"] == "agrees" and bool(line["signs agree"])
    assert combined.loc["shared", "verdict"] == "n/a"  # the study's baseline has no change
    # A fourth run that widens the spread turns the same mean change into noise.
    noisy = combine_seeds([*runs, _table(70.0, 67.0), _table(70.0, 73.0)])
    assert noisy.loc["unshared", "verdict"] == "within noise"
    assert verdict_counts(noisy) == {"agrees": 0, "disagrees": 0, "within noise": 1, "n/a": 1}


def test_one_run_has_no_spread_and_plain_sign_verdicts():
    single = with_verdicts(_table(70.0, 71.0))
    assert single.loc["unshared", "verdict"] == "disagrees"
    combined = combine_seeds([_table(70.0, 71.0)])
    assert math.isnan(combined.loc["unshared", "change spread"])
    assert combined.loc["unshared", "verdict"] == "disagrees"


def test_combine_seeds_refuses_mismatched_rows():
    other = build_ablation_table({"shared": 70.0}, rows=ABLATION_ROWS[:1], unit="percent")
    with pytest.raises(ValueError, match="other rows"):
        combine_seeds([_table(70.0, 68.0), other])


def test_headline_table():
    table = headline_table({"ss_test_2000": 60.0, "shared": 65.0, "unshared": 59.0})
    assert list(table.index) == ["ss_test_2000", "shared", "unshared"]
    assert table.loc["ss_test_2000", "our mAP (%)"] == pytest.approx(60.0)  # the row that computes SS 2000
    assert table.loc["ss_test_2000", "paper mAP"] == pytest.approx(58.7)
    assert table.loc["shared", "paper minus SS"] == pytest.approx(59.9 - 58.7)
    assert table.loc["shared", "ours minus SS"] == pytest.approx(5.0)
    assert table.loc["shared", "verdict"] == "agrees"
    # The paper's unshared equals its SS baseline (0.0): only an exact 0 agrees with it.
    assert table.loc["unshared", "verdict"] == "disagrees"
    noisy = headline_table({"ss_test_2000": 60.0, "shared": 59.5, "unshared": 60.0}, spread={"shared": 1.0})
    assert noisy.loc["shared", "verdict"] == "within noise"


def _recall_csv():
    ious = [0.5, 0.7, 0.9]
    return pd.DataFrame({
        "iou": ious,
        "ss_300": [0.80, 0.60, 0.30], "ss_2000": [0.95, 0.85, 0.50],
        "rpn_shared_300": [0.90, 0.70, 0.20], "rpn_shared_2000": [0.92, 0.72, 0.22],
        "rpn_unshared_300": [0.88, 0.65, 0.20], "rpn_unshared_2000": [0.90, 0.70, 0.25],
    })


def test_recall_table_and_findings():
    table = recall_table_at(_recall_csv())
    assert list(table.index) == ["ss", "rpn_shared", "rpn_unshared"]  # no rpn_strong column
    assert table.loc["ss", "recall@0.7 (300)"] == pytest.approx(0.60)
    # SS loses (0.15 + 0.25 + 0.20) / 3 = 0.2 going from 2000 to 300; the shared RPN 0.02.
    assert table.loc["ss", "loss 2000->300"] == pytest.approx(0.20)
    assert table.loc["rpn_shared", "loss 2000->300"] == pytest.approx(0.02)
    findings = recall_findings(table)
    assert any("RPN, shared (step 3)" in f and "RPN ahead, as in the paper" in f for f in findings)
    assert any("holds up better, as in the paper" in f for f in findings)
    assert any("step-3 RPN vs step-1 RPN" in f and "helps" in f for f in findings)
    worse = _recall_csv().assign(rpn_shared_300=[0.70, 0.50, 0.1])
    assert any("NOT ahead" in f for f in recall_findings(recall_table_at(worse)))
    tie = _recall_csv().assign(rpn_shared_300=[0.88, 0.65, 0.2])
    assert any("a tie" in f for f in recall_findings(recall_table_at(tie)))


def test_timing_table_and_sections():
    timing = {"device": "test cpu", "images": 5,
              "ss": {"conv_ms": 10.0, "proposal_ms": 400.0, "region_ms": 30.0, "total_ms": 440.0, "fps": 2.27},
              "rpn": {"conv_ms": 10.0, "proposal_ms": 4.0, "region_ms": 6.0, "total_ms": 20.0, "fps": 50.0},
              "proposal_ratio_ss_over_rpn": 100.0, "total_ratio_ss_over_rpn": 22.0}
    table = timing_table(timing)
    assert list(table.columns) == ["system", "device", "conv_ms", "proposal_ms", "region_ms", "total_ms", "fps"]
    assert list(table["system"])[:2] == ["ours: SS + Fast R-CNN", "ours: RPN + Fast R-CNN"]
    assert (table["system"] == "paper: SS + Fast R-CNN (VGG-16)").any()
    text = sections_markdown(headline_table({"shared": 1.0}), recall_table_at(_recall_csv()), timing)
    assert "Timing per image (paper Table 5)" in text and "100x the RPN's time" in text
    assert "Recall at 300 proposals" in text and "Headline" in text
    assert "not available: run stage timing" in sections_markdown(None, None, None)


def test_seed_report_cli_combines_csvs(tmp_path, capsys):
    from tasks.seed_report import main

    paths = []
    for number, (shared, unshared) in enumerate([(70.0, 68.0), (72.0, 71.0), (71.0, 71.0)]):
        path = tmp_path / f"seed{number}.csv"
        with_verdicts(_table(shared, unshared)).to_csv(path, index=True)
        paths.append(str(path))
    assert main(["--csv", *paths, "--out", str(tmp_path / "out")]) == 0
    combined = pd.read_csv(tmp_path / "out" / "ablations_seeds.csv", index_col="key")
    assert combined.loc["unshared", "change spread"] == pytest.approx(1.0)
    assert combined.loc["unshared", "verdict"] == "agrees"
    assert "over 3 seeds" in capsys.readouterr().out
    assert main(["--csv", str(tmp_path / "missing.csv"), "--out", str(tmp_path)]) == 1
    assert "missing.csv" in capsys.readouterr().err


def test_seed_report_reads_summaries_of_experiments(tmp_path, monkeypatch):
    import json
    import subprocess

    from tasks.seed_report import experiment_report, main

    # A git repo whose two commits hold two runs' metrics/ablation_report.json, one under an
    # experiment-like ref (refs/exps/...): the report is rebuilt from `our_map`.
    monkeypatch.chdir(tmp_path)
    git = ["git", "-c", "user.email=t@e", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "metrics").mkdir()
    for number, (shared, unshared) in enumerate([(70.0, 68.0), (72.0, 71.0)]):
        (tmp_path / "metrics" / "ablation_report.json").write_text(
            json.dumps({"our_map": {"shared": shared, "unshared": unshared}}))
        subprocess.run([*git, "add", "-A"], check=True)
        subprocess.run([*git, "commit", "-qm", f"run {number}"], check=True)
        if number == 0:
            subprocess.run(["git", "update-ref", "refs/exps/ab/cdef/exp-one", "HEAD"], check=True)
    table = experiment_report("exp-one")
    assert table.loc["unshared", "our change"] == pytest.approx(-2.0)
    assert experiment_report("workspace").loc["unshared", "our change"] == pytest.approx(-1.0)
    assert main(["--exp", "workspace", "exp-one", "--out", str(tmp_path / "out")]) == 0
    combined = pd.read_csv(tmp_path / "out" / "ablations_seeds.csv", index_col="key")
    assert combined.loc["unshared", "our change"] == pytest.approx(-1.5)
    assert main(["--exp", "no-such-exp", "--out", str(tmp_path / "out")]) == 1


def test_seed_report_takes_partial_runs_from_their_metrics_folders(tmp_path):
    import json

    from tasks.seed_report import main

    # Run 1 scored both rows, run 2 only the unshared one: the shared row counts one run,
    # its change (unshared minus shared) only run 1's.
    for name, rows in (("a", {"shared": 0.70, "unshared": 0.68}), ("b", {"unshared": 0.66})):
        folder = tmp_path / name / "ablations"
        folder.mkdir(parents=True)
        for key, value in rows.items():
            (folder / f"{key}.json").write_text(json.dumps({"mAP": value, "ap": {}}))
    assert main(["--metrics", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "out")]) == 0
    combined = pd.read_csv(tmp_path / "out" / "ablations_seeds.csv", index_col="key")
    assert combined.loc["shared", "runs"] == 1 and combined.loc["unshared", "runs"] == 2
    assert combined.loc["unshared", "our mAP (%)"] == pytest.approx(67.0)
    assert combined.loc["unshared", "our change"] == pytest.approx(-2.0)
    (tmp_path / "c").mkdir()
    assert main(["--metrics", str(tmp_path / "c"), "--out", str(tmp_path / "out")]) == 1
