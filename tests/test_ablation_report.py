"""Ablation rows (model/ablations.py) and the report built from them (tasks/ablation_report.py)."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from model.ablations import (
    ABLATION_ROWS,
    PAPER_RESULTS,
    AblationRow,
    ablation_proposal_config,
    ablation_row,
)
from model.config import ProposalConfig
from tasks.ablation_report import (
    COLUMNS,
    build_ablation_table,
    read_report_csv,
    signs_agree,
    to_markdown,
    to_percent,
    write_report,
)

BASE = ProposalConfig()  # the paper's test settings: 6000 -> NMS 0.7 -> 300


# ---------------------------------------------------------------- rows and configs
def test_every_paper_row_is_there_with_its_number():
    expected = {
        "shared": 59.9,
        "unshared": 58.7,
        "ss_rpn_test": 56.8,
        "top_100": 55.1,
        "no_nms": 55.2,
        "no_cls_random_1000": 55.8,
        "no_cls_random_100": 44.6,
        "no_reg": 52.1,
        "stronger_rpn": 59.2,
        "one_stage": 53.8,  # Table 10, one test scale (53.9 is the five-scale number)
    }
    assert {r.key: r.paper_map for r in ABLATION_ROWS} == expected
    assert PAPER_RESULTS["two_stage"] == 58.7 and PAPER_RESULTS["one_stage_5_scales"] == 53.9


def test_baselines_follow_the_paper():
    baseline = {r.key: r.paper_baseline_key for r in ABLATION_ROWS}
    assert baseline["shared"] is None
    assert baseline["unshared"] == "shared"
    for key in ("top_100", "no_nms", "no_cls_random_1000", "no_cls_random_100", "no_reg", "stronger_rpn"):
        assert baseline[key] == "ss_rpn_test"
        assert ablation_row(key).detector == "ss"
    # The one-stage system is compared with the unshared two-stage system (58.7, Table 10).
    assert baseline["one_stage"] == "unshared"
    assert ablation_row("unshared").paper_map == PAPER_RESULTS["two_stage"]


def test_baseline_rows_keep_the_test_settings():
    for key in ("shared", "unshared", "ss_rpn_test", "stronger_rpn"):
        assert ablation_proposal_config(ablation_row(key), BASE) == BASE


def test_top_100():
    cfg = ablation_proposal_config(ablation_row("top_100"), BASE)
    assert (cfg.pre_nms_top_n, cfg.post_nms_top_n, cfg.use_nms, cfg.ranking) == (6000, 100, True, "score")


def test_no_nms_keeps_top_6000():
    cfg = ablation_proposal_config(ablation_row("no_nms"), BASE)
    assert (cfg.pre_nms_top_n, cfg.post_nms_top_n, cfg.use_nms, cfg.ranking) == (6000, 6000, False, "score")
    assert cfg.use_regression


@pytest.mark.parametrize("key, n", [("no_cls_random_1000", 1000), ("no_cls_random_100", 100)])
def test_no_cls_draws_n_at_random_from_all_boxes(key, n):
    cfg = ablation_proposal_config(ablation_row(key), BASE)
    # All boxes are candidates, none suppressed, N drawn uniformly (the paper: no NMS/ranking).
    assert (cfg.pre_nms_top_n, cfg.post_nms_top_n, cfg.use_nms, cfg.ranking) == (-1, n, False, "random")
    assert cfg.use_regression


def test_no_reg_uses_anchors_top_300():
    cfg = ablation_proposal_config(ablation_row("no_reg"), BASE)
    assert (cfg.use_regression, cfg.post_nms_top_n, cfg.use_nms, cfg.ranking) == (False, 300, True, "score")


def test_overrides_do_not_touch_base_and_are_read_only():
    base = ProposalConfig(min_size=8.0, nms_threshold=0.6)
    cfg = ablation_proposal_config(ablation_row("top_100"), base)
    assert base.post_nms_top_n == 300
    assert (cfg.min_size, cfg.nms_threshold) == (8.0, 0.6)  # the rest of base carries over
    with pytest.raises(TypeError):
        ablation_row("top_100").proposal_cfg["post_nms_top_n"] = 5  # type: ignore[index]


def test_bad_rows_are_refused():
    with pytest.raises(ValueError, match="unknown ProposalConfig field"):
        AblationRow("x", "x", 1.0, None, "", "rpn", "ss", proposal_cfg={"post_nms": 100})
    with pytest.raises(ValueError, match="proposal_source"):
        AblationRow("x", "x", 1.0, None, "", "rpn_typo", "ss")
    with pytest.raises(KeyError, match="unknown ablation row"):
        ablation_row("nope")


# ---------------------------------------------------------------- sign agreement
def test_sign_rule():
    assert signs_agree(-1.2, -0.01) is True
    assert signs_agree(-1.2, 0.5) is False
    assert signs_agree(0.0, 0.0) is True
    assert signs_agree(0.0, 0.1) is False  # 0 agrees only with 0
    assert signs_agree(-0.3, 0.0) is False
    assert signs_agree(1.0, math.nan) is None


# Worked by hand (ours in fractions). Paper changes: unshared 58.7 - 59.9 = -1.2;
# ss_rpn_test 56.8 - 58.7 = -1.9; top_100 55.1 - 56.8 = -1.7; no_reg 52.1 - 56.8 = -4.7;
# one_stage 53.8 - 58.7 = -4.9.
OURS = {
    "shared": 0.600,
    "unshared": 0.580,  # -2.0: agrees
    "ss_rpn_test": 0.590,  # +1.0 vs unshared: disagrees
    "top_100": 0.550,  # -4.0 vs ss_rpn_test: agrees
    "no_reg": 0.590,  # 0.0 vs ss_rpn_test: disagrees (0 only agrees with 0)
    "one_stage": 0.500,  # -8.0 vs unshared: agrees
    # no_nms, the no-cls rows and stronger_rpn missing
}


def test_table_worked_by_hand():
    table = build_ablation_table(OURS)
    assert list(table.columns) == list(COLUMNS)
    assert list(table.index) == [r.key for r in ABLATION_ROWS]
    assert table.loc["top_100", "row"] == "top-100"
    assert table.loc["shared", "our mAP (%)"] == pytest.approx(60.0)
    paper_change = table["paper change"]
    assert paper_change["unshared"] == pytest.approx(-1.2)
    assert paper_change["ss_rpn_test"] == pytest.approx(-1.9)
    assert paper_change["top_100"] == pytest.approx(-1.7)
    assert paper_change["stronger_rpn"] == pytest.approx(2.4)
    assert paper_change["one_stage"] == pytest.approx(-4.9)
    assert math.isnan(paper_change["shared"])
    ours = table["our change"]
    assert ours["unshared"] == pytest.approx(-2.0)
    assert ours["ss_rpn_test"] == pytest.approx(1.0)
    assert ours["top_100"] == pytest.approx(-4.0)
    assert ours["no_reg"] == pytest.approx(0.0, abs=1e-9)
    assert ours["one_stage"] == pytest.approx(-8.0)

    agree = table["signs agree"]
    assert str(agree.dtype) == "boolean"
    assert bool(agree["unshared"]) is True
    assert bool(agree["ss_rpn_test"]) is False
    assert bool(agree["top_100"]) is True
    assert bool(agree["one_stage"]) is True
    # Missing rows and the study's baseline: NaN mAP / change, NA agreement.
    for key in ("shared", "no_nms", "no_cls_random_1000", "no_cls_random_100", "stronger_rpn"):
        assert agree[key] is pd.NA
    assert math.isnan(table.loc["no_nms", "our mAP (%)"])
    assert math.isnan(table.loc["stronger_rpn", "our change"])


def test_no_reg_exact_zero_change_disagrees():
    # Computed in percent so the change is exactly 0.0.
    table = build_ablation_table({"ss_rpn_test": 50.0, "no_reg": 50.0}, unit="percent")
    assert table.loc["no_reg", "our change"] == 0.0
    assert bool(table.loc["no_reg", "signs agree"]) is False


def test_change_needs_our_baseline():
    table = build_ablation_table({"top_100": 0.4})  # ss_rpn_test not run
    assert math.isnan(table.loc["top_100", "our change"])
    assert table.loc["top_100", "signs agree"] is pd.NA


def test_units():
    assert to_percent({"a": 0.5}, unit="fraction") == {"a": 50.0}
    assert to_percent({"a": 50.0}, unit="percent") == {"a": 50.0}
    assert to_percent({"a": 0.5}, unit="percent") == {"a": 0.5}  # a very weak model
    with pytest.raises(ValueError, match="above 1"):
        to_percent({"a": 0.5, "b": 2.0}, unit="fraction")
    with pytest.raises(ValueError, match="outside 0..100"):
        to_percent({"a": 120.0}, unit="percent")
    with pytest.raises(ValueError, match="unknown ablation rows"):
        build_ablation_table({"sharde": 0.5})
    with pytest.raises(ValueError, match="unit must be one of"):
        to_percent({"a": 0.5}, unit="auto")  # no guessing


# ---------------------------------------------------------------- files
def test_write_report_round_trip(tmp_path):
    table = build_ablation_table(OURS)
    paths = write_report(table, tmp_path / "reports")
    assert {k: p.name for k, p in paths.items()} == {
        "markdown": "ablations.md",
        "csv": "ablations.csv",
        "png": "ablations.png",
    }
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = paths["markdown"].read_text()
    assert "| top-100 |" in markdown and "| -1.7 |" in markdown and "| -4.0 |" in markdown
    table_lines = [line for line in markdown.splitlines() if line.startswith("|")]
    assert len(table_lines) == 2 + len(ABLATION_ROWS)  # header, rule, one line per row
    assert "| n/a |" in markdown
    pd.testing.assert_frame_equal(read_report_csv(paths["csv"]), table)
    # No temporary files left behind.
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == sorted(
        ["ablations.md", "ablations.csv", "ablations.png"]
    )


def test_markdown_formats_signs_and_escapes_pipes():
    table = build_ablation_table({"shared": 0.6, "unshared": 0.62})
    table.loc["shared", "what changes"] = "a | b"
    lines = to_markdown(table).splitlines()
    assert lines[0] == "| " + " | ".join(COLUMNS) + " |"
    unshared = next(line for line in lines if line.startswith("| unshared |"))
    assert unshared.endswith("| 58.7 | -1.2 | 62.0 | +2.0 | no |")
    assert "a \\| b" in lines[2]
