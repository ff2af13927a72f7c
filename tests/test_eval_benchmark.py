"""The evaluation speed benchmark still runs, and its loop reference agrees with evaluate_voc (small size)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_eval_speed_benchmark_small():
    completed = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "eval_speed.py"), "--images", "60", "--seed", "3"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "agree exactly" in completed.stdout
    diffs = re.findall(r"max \|AP diff\| (\S+)", completed.stdout)
    assert diffs == ["0", "0"]  # voc07 and area, bit-for-bit equal
