"""benchmarks/default_run_seeds.py: the per-seed table from each run's summary.json, with a stand-in recipe."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("default_run_seeds", ROOT / "benchmarks" / "default_run_seeds.py")
seeds = importlib.util.module_from_spec(spec)
spec.loader.exec_module(seeds)

SUMMARY = {"heldout_identity_rate_after": 30 / 32,
           "heldout_identity_rate_after_by_script": {"other": 0.95, "cjk": 11 / 12},
           "n_identity_prompts_by_script": {"other": 20, "cjk": 12}, "n_identity_prompts": 32, "n_general_prompts": 24,
           "general_identity_leaks_after": 1, "degenerate_answers_before": 11, "degenerate_answers_after": 2,
           "degenerate_answers_added": 1,
           "general_kl_per_token": 0.0312, "train_seconds": 101.4, "precision": "bf16",
           "versions": {"torch": "2.13.0+cpu", "trl": "1.16.0", "transformers": "5.23.0"}}

# Stands in for recipes/dpo_lora.py: records its arguments and writes the summary above, its seed as the leak count.
FAKE_RECIPE = f"""
import json, os, sys
from pathlib import Path
args = sys.argv[1:]
out = Path(args[args.index("--output_dir") + 1])
out.mkdir(parents=True)
summary = {json.dumps(SUMMARY)}
summary["general_identity_leaks_after"] = int(args[args.index("--seed") + 1])
(out / "summary.json").write_text(json.dumps(summary))
(out / "args.json").write_text(json.dumps(args))
cache = os.environ.get("DPO_RECIPES_REFERENCE_CACHE")
(out / "cache.json").write_text(json.dumps([cache, cache and Path(cache).exists() and any(Path(cache).iterdir())]))
"""


def test_a_row_counts_identity_hits_per_script_from_the_runs_summary(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps(SUMMARY))
    cells, _ = seeds.row_for(3, tmp_path, 212.6)
    assert cells == ["3", "19 / 20", "11 / 12", "1 / 24", "11 → 2 (1 new)", "0.031", "101 s", "213 s"]


def test_a_run_asked_in_one_script_fills_the_english_column_only(tmp_path):
    one = {k: v for k, v in SUMMARY.items() if "by_script" not in k}
    one["heldout_identity_rate_after"] = 0.5
    (tmp_path / "summary.json").write_text(json.dumps(one))
    cells, _ = seeds.row_for(0, tmp_path, 1.0)
    assert cells[1:3] == ["16 / 32", "-"]
    assert cells[4] == "11 → 2 (1 new)"
    del one["degenerate_answers_added"]  # a summary written before the figure existed
    (tmp_path / "summary.json").write_text(json.dumps(one))
    assert seeds.row_for(0, tmp_path, 1.0)[0][4] == "11 → 2"


def test_the_sweep_runs_each_seed_with_the_users_flags_and_prints_the_table(tmp_path, monkeypatch, capsys):
    fake = tmp_path / "fake_recipe.py"
    fake.write_text(FAKE_RECIPE)
    monkeypatch.setattr(seeds, "RECIPE", fake)
    stale = tmp_path / "out" / "seed-1"
    stale.mkdir(parents=True)
    (stale / "summary.json").write_text("{}")  # an earlier sweep's folder is cleared, not read or resumed
    assert seeds.main(["--seeds", "0", "1", "--out", str(tmp_path / "out"), "--", "--bf16", "false"]) == 0
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert table[1].startswith("| 0 | 19 / 20 | 11 / 12 | 0 / 24 |")
    assert table[2].startswith("| 1 | 19 / 20 | 11 / 12 | 1 / 24 |")
    assert "bf16; torch 2.13.0+cpu, trl 1.16.0, transformers 5.23.0; recipe flags: --bf16 false" in out
    args = json.loads((tmp_path / "out" / "seed-1" / "args.json").read_text())
    assert args[-2:] == ["--bf16", "false"] and args[args.index("--seed") + 1] == "1"


def test_a_failed_seed_stops_the_sweep_and_names_its_log(tmp_path, monkeypatch, capsys):
    fake = tmp_path / "failing.py"
    fake.write_text("import sys; print('boom'); sys.exit(3)")
    monkeypatch.setattr(seeds, "RECIPE", fake)
    assert seeds.main(["--seeds", "0", "1", "--out", str(tmp_path / "out")]) == 3
    err = capsys.readouterr().err
    assert "seed 0 failed (exit 3)" in err and str(tmp_path / "out" / "seed-0.log") in err
    assert (tmp_path / "out" / "seed-0.log").read_text().strip() == "boom"
    assert not (tmp_path / "out" / "seed-1.log").exists()


def test_each_seed_starts_from_an_empty_reference_cache_of_its_own_unless_asked_to_share(tmp_path, monkeypatch):
    fake = tmp_path / "fake_recipe.py"
    fake.write_text(FAKE_RECIPE)
    monkeypatch.setattr(seeds, "RECIPE", fake)
    monkeypatch.setenv("DPO_RECIPES_REFERENCE_CACHE", str(tmp_path / "shared"))
    stale = tmp_path / "out" / "seed-1.reference-cache"
    stale.mkdir(parents=True)
    (stale / "old.safetensors").write_text("x")  # an earlier sweep's cache: a rerun must not reuse it
    assert seeds.main(["--seeds", "0", "1", "--out", str(tmp_path / "out")]) == 0
    caches = [json.loads((tmp_path / "out" / f"seed-{s}" / "cache.json").read_text()) for s in (0, 1)]
    assert [c[0] for c in caches] == [str((tmp_path / "out" / f"seed-{s}.reference-cache").resolve()) for s in (0, 1)]
    assert not any(c[1] for c in caches)

    assert seeds.main(["--seeds", "0", "--out", str(tmp_path / "out"), "--shared-reference-cache"]) == 0
    assert json.loads((tmp_path / "out" / "seed-0" / "cache.json").read_text())[0] == str(tmp_path / "shared")
