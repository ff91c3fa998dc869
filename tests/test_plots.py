"""dpo_recipes.watch.plots: a run's curves as PNGs, from a real default run's history and small fake ones."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from dpo_recipes.cli import main
from dpo_recipes.errors import DPORecipesError
from dpo_recipes.watch import plots, run_logs

FIXTURE = Path(__file__).parent / "fixtures" / "plots_default_run"
DEFAULT_PANELS = {"loss", "rewards", "margins", "accuracies", "logps", "lengths", "overview"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def default_run(folder: Path) -> Path:
    """A copy of the real default run's metrics.jsonl, summary.json and eval_answers.jsonl."""
    shutil.copytree(FIXTURE, folder)
    return folder


def fake_run(folder: Path, history: list[dict]) -> Path:
    """A run folder holding only `history` as metrics.jsonl (json writes NaN and Infinity as such)."""
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in history))
    return folder


def dpo_rows(steps=(5, 10, 15), **extra) -> list[dict]:
    return [{"loss": 0.7 - 0.1 * i, "rewards/chosen": 0.1 * i, "rewards/rejected": -0.1 * i,
             "rewards/margins": 0.2 * i, "rewards/accuracies": 0.5 + 0.1 * i, "logps/chosen": -30.0 + i,
             "logps/rejected": -30.0 - i, "learning_rate": 1e-4, "epoch": 0.1 * i, "step": step, **extra}
            for i, step in enumerate(steps)]


def assert_valid_png(path: Path) -> None:
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 100


def labels(fig) -> list[str]:
    return [line.get_label() for ax in fig.axes for line in ax.get_lines() if not line.get_label().startswith("_")]


def test_default_run_writes_each_panel_as_a_valid_png_and_a_small_overview(tmp_path):
    run_dir = default_run(tmp_path / "default-run")
    written = plots.plot_run(run_dir)
    assert {p.stem for p in written} == DEFAULT_PANELS
    assert all(p.parent == run_dir / "plots" for p in written)
    for path in written:
        assert_valid_png(path)
    assert 40_000 < (run_dir / "plots" / "overview.png").stat().st_size < 150_000  # committable into a README
    assert sorted(p.name for p in (run_dir / "plots").iterdir()) == sorted(p.name for p in written)  # no temp files


def test_series_reads_the_training_curves_and_leaves_out_the_totals_row():
    history = [json.loads(line) for line in (FIXTURE / "metrics.jsonl").read_text().splitlines()]
    data = run_logs.series(history)
    steps, values = data["loss"]
    assert steps == [5, 10, 15, 20, 25, 30] and values[0] == pytest.approx(2.4379507)
    assert "train_loss" not in data and "train_runtime" not in data and "step" not in data and "epoch" not in data


def test_answer_lengths_are_mean_words_per_kind_before_and_after(tmp_path):
    path = tmp_path / "eval_answers.jsonl"
    rows = [{"prompt": "p", "kind": "identity", "before": "one two three", "after": "one"},
            {"prompt": "p", "kind": "identity", "before": "a b c d e", "after": "a b c"},
            {"prompt": "p", "kind": "general", "before": "x", "after": "x y"}, {"prompt": "p", "kind": "general"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert run_logs.answer_lengths(path) == {"identity": (4.0, 2.0), "general": (1.0, 2.0)}
    assert run_logs.answer_lengths(tmp_path / "absent.jsonl") == {}


def test_eval_logs_are_markers_on_the_axes_of_their_training_curve(tmp_path):
    history = dpo_rows((5, 10, 15, 20))
    history.insert(2, {"eval_loss": 0.65, "eval_rewards/margins": 0.3, "eval_rewards/accuracies": 0.6,
                       "eval_runtime": 1.0, "epoch": 0.2, "step": 10})
    history.append({"eval_loss": 0.5, "eval_rewards/margins": 0.5, "eval_rewards/accuracies": 0.7, "step": 20})
    run = run_logs.load_run(fake_run(tmp_path / "run", history))
    assert run["series"]["eval_loss"] == ([10.0, 20.0], [0.65, 0.5])

    fig = plots.panel_figure("loss", [run])
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert set(lines) == {"loss", "eval loss"}
    assert list(lines["eval loss"].get_xdata()) == [10.0, 20.0] and lines["eval loss"].get_marker() == "o"
    assert lines["eval loss"].get_color() == lines["loss"].get_color()
    assert "eval rewards/margins" in labels(plots.panel_figure("margins", [run]))
    assert "eval rewards/accuracies" in labels(plots.overview_figure([run]))
    assert {p.stem for p in plots.plot_run(run_dir=tmp_path / "run")} >= {"loss", "margins", "accuracies"}


def test_named_eval_sets_and_loss_terms_go_to_their_own_curve(tmp_path):
    """ORPO-like: eval_nll_loss is nll_loss's eval, not a 'nll' eval set's loss; eval_heldout_loss is loss's."""
    history = [{**row, "nll_loss": 1.5 - row["step"] / 100, "log_odds_ratio": -0.6, "log_odds_chosen": 0.2}
               for row in dpo_rows()]
    history.append({"eval_nll_loss": 1.4, "eval_heldout_loss": 0.6, "step": 15})
    run = run_logs.load_run(fake_run(tmp_path / "orpo", history))
    assert labels(plots.panel_figure("loss", [run])) == ["loss", "eval heldout loss"]
    terms = plots.panel_figure("terms", [run])
    assert [ax.get_ylabel() for ax in terms.axes if ax.get_visible()] == [
        "nll_loss (nats per token)", "log_odds_ratio (nats)", "log_odds_chosen (nats)"]
    assert "eval nll_loss" in labels(terms)


def test_hook_run_gets_hook_png_with_one_axes_per_metric(tmp_path):
    history = dpo_rows(**{"odpo/offset": 0.4, "odpo/accuracy": 0.8, "odpo/loss": 0.6})
    run_dir = fake_run(tmp_path / "odpo-run", history)
    written = plots.plot_run(run_dir)
    assert (run_dir / "plots" / "hook.png") in written
    assert_valid_png(run_dir / "plots" / "hook.png")
    fig = plots.panel_figure("hook", [run_logs.load_run(run_dir)])
    assert sorted(ax.get_ylabel() for ax in fig.axes if ax.get_visible()) == [
        "odpo/accuracy (share of pairs)", "odpo/loss (nats)", "odpo/offset (nats)"]
    assert "lengths.png" not in {p.name for p in written}  # no eval_answers.jsonl: skipped, not an error


def test_kto_history_without_margins_skips_that_panel_and_says_so(tmp_path, caplog):
    history = [{"loss": 0.5, "kl": 0.01 * i, "rewards/chosen": 0.1 * i, "logps/chosen": -20.0, "step": 5 * i}
               for i in range(1, 4)]
    history[1]["rewards/rejected"] = -0.2  # a logging interval with undesirable rows
    run_dir = fake_run(tmp_path / "kto", history)
    with caplog.at_level("INFO", logger="dpo_recipes.watch.plots"):
        written = {p.stem for p in plots.plot_run(run_dir)}
    assert written == {"loss", "rewards", "logps", "terms", "overview"}
    assert "margins (no rewards/margins logged)" in caplog.text and "accuracies" in caplog.text


def test_nan_values_are_gaps_and_an_all_nan_curve_is_skipped(tmp_path):
    history = dpo_rows((5, 10, 15, 20))
    history[1]["loss"] = float("nan")
    history[2]["loss"] = None
    history[3]["logps/chosen"] = float("inf")
    for row in history:
        row["rewards/margins"] = float("nan")
    run = run_logs.load_run(fake_run(tmp_path / "nan", history))
    line = plots.panel_figure("loss", [run]).axes[0].get_lines()[0]
    assert [math.isnan(y) for y in line.get_ydata()] == [False, True, True, False]
    assert math.isnan(run["series"]["logps/chosen"][1][3])
    assert plots.panel_figure("margins", [run]) is None
    written, skipped = plots.draw_runs([run], tmp_path / "out")
    assert "margins" not in {p.stem for p in written} and any(s.startswith("margins") for s in skipped)
    for path in written:
        assert_valid_png(path)


def test_overlay_of_two_runs_draws_one_line_per_run_labelled_by_folder(tmp_path, capsys):
    first = default_run(tmp_path / "a" / "run")
    second = fake_run(tmp_path / "b" / "run", dpo_rows())
    assert plots.run_labels([first, second]) == ["a/run", "b/run"]
    assert main(["plot", str(first), str(second), "--out", str(tmp_path / "compare")]) == 0
    written = [Path(line) for line in capsys.readouterr().out.splitlines() if line.endswith(".png")]
    assert {p.stem for p in written} == DEFAULT_PANELS and all(p.parent == tmp_path / "compare" for p in written)
    runs = [run_logs.load_run(first, "a/run"), run_logs.load_run(second, "b/run")]
    assert labels(plots.panel_figure("margins", runs)) == ["a/run: rewards/margins", "b/run: rewards/margins"]
    colors = [line.get_color() for line in plots.panel_figure("loss", runs).axes[0].get_lines()]
    assert len(set(colors)) == 2
    assert plots.default_out_dir([first, second]) == tmp_path / "plots-compare-a_run-vs-b_run"


def test_run_labels_tell_apart_folders_with_the_same_name():
    assert plots.run_labels(["x/run1", "y/run2"]) == ["run1", "run2"]
    assert plots.run_labels(["/r/x/out", "/r/y/z/out", "/s/y/z/out"]) == ["x/out", "r/y/z/out", "s/y/z/out"]
    assert plots.run_labels(["/r/out", "/r/out"]) == ["r/out", "r/out (2)"]


def test_a_redraw_in_the_default_folder_removes_panels_that_no_longer_have_data(tmp_path):
    run_dir = default_run(tmp_path / "run")
    plots.plot_run(run_dir)
    (run_dir / "eval_answers.jsonl").unlink()  # a resumed run that evaluated no prompts
    (run_dir / "plots" / "notes.txt").write_text("mine")
    written = plots.plot_run(run_dir)
    assert "lengths" not in {p.stem for p in written} and not (run_dir / "plots" / "lengths.png").exists()
    assert (run_dir / "plots" / "notes.txt").is_file()


def test_a_failed_write_leaves_no_png_and_no_temporary_file(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    def broken_savefig(self, path, **kwargs):
        Path(path).write_bytes(PNG_SIGNATURE)  # half a PNG, then the crash
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    run_dir = default_run(tmp_path / "run")
    with pytest.raises(DPORecipesError, match="loss.png: cannot write the plot"):
        plots.plot_run(run_dir)
    assert list((run_dir / "plots").iterdir()) == []


def test_cli_plots_one_run_and_overlays_several(tmp_path, capsys):
    run_dir = default_run(tmp_path / "runs" / "default")
    other = fake_run(tmp_path / "runs" / "hooked", dpo_rows(**{"rdpo/length_diff": 3.0}))
    assert main(["plot", str(run_dir)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert str(run_dir / "plots" / "overview.png") in printed and printed[-1].startswith("skipped: hook")
    assert main(["plot", str(run_dir), str(other)]) == 0
    out_dir = tmp_path / "runs" / "plots-compare-default-vs-hooked"
    assert (out_dir / "hook.png").is_file() and (out_dir / "lengths.png").is_file()
    assert_valid_png(out_dir / "overview.png")


def test_cli_names_a_folder_without_metrics_in_one_line_and_writes_nothing(tmp_path, capsys):
    run_dir = default_run(tmp_path / "good")
    (tmp_path / "empty").mkdir()
    assert main(["plot", str(run_dir), str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path / "empty") in err and "metrics.jsonl" in err
    assert len(err.strip().splitlines()) == 1
    assert not (run_dir / "plots").exists() and not list(tmp_path.glob("plots-compare-*"))
    assert main(["plot", str(tmp_path / "absent")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_a_corrupt_metrics_line_is_an_error_naming_the_line(tmp_path):
    run_dir = fake_run(tmp_path / "run", dpo_rows())
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"loss": 0.3, "st\n')
    with pytest.raises(DPORecipesError, match=r"metrics.jsonl line 4: not JSON"):
        plots.plot_run(run_dir)


def test_orpo_and_simpo_panels_say_their_rewards_have_no_reference(tmp_path):
    from dpo_recipes.watch.plots import panel_text

    dpo, orpo = {"recipe": "dpo_lora"}, {"recipe": "orpo"}
    assert "mean token log-prob" in panel_text("rewards", [orpo])[1]
    assert "per token" in panel_text("logps", [{"recipe": "simpo"}])[1]
    assert "scaled by β" in panel_text("rewards", [dpo])[1] and "token sum" in panel_text("logps", [dpo])[1]
    assert "ORPO/SimPO" in panel_text("margins", [dpo, orpo])[1]


def test_a_file_given_as_run_folder_is_named_as_a_file(tmp_path, capsys):
    from dpo_recipes import cli

    path = tmp_path / "summary.json"
    path.write_text("{}")
    assert cli.main(["plot", str(path)]) == 2
    assert "a file, not a run folder" in capsys.readouterr().err
