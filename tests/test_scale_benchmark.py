"""benchmarks/scale.py, small: a user-sized run's report (phases, first step, silences, memory against the estimate,
planted bad rows counted) on the embedded model, 200 pairs, one step."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.e2e


def test_the_scale_benchmark_reports_every_figure(tmp_path):
    done = subprocess.run([sys.executable, "benchmarks/scale.py", "--pairs", "200", "--steps", "1", "--workdir",
                           str(tmp_path), "--set", "per_device_train_batch_size=2", "--set",
                           "gradient_accumulation_steps=1", "--set", "max_length=512"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert re.search(r"first optimizer step: started at [\d.]+ s, done at [\d.]+ s", out)
    assert re.search(r"peak RSS: [\d.]+ GB; pre-flight estimate [\d.]+ GB \([\d.]+x the estimate\)", out)
    assert "loading the data" in out and "training" in out  # the phases, from summary.json
    assert re.search(r"planted bad rows .*; counted by validation", out)
    timed = (tmp_path / "run-output.log").read_text()
    assert "dpo_lora: starting" in timed.splitlines()[0]
