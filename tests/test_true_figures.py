"""Every figure a run prints is true: the pairs it trained, the files it names, and whether it could learn at all.

In-process runs of recipes/dpo_lora.py on the tiny random Llama (seconds each)."""

from __future__ import annotations

import logging

import pytest
from test_own_run import FIXTURE, dpo, quick, summary

from dpo_recipes.check.preflight import preflight
from dpo_recipes.config import parse_recipe_args
from dpo_recipes.run.finish import outputs_line, rewards_never_moved
from dpo_recipes.shipped import default_config


@pytest.mark.parametrize(("epochs", "pairs"), [("1", 8), ("2", 16)])
def test_pairs_trained_counts_a_partial_last_batch_once(tiny_model_dir, tmp_path, epochs, pairs):
    out = tmp_path / "run"  # 8 pairs at batch 3: batches of 3, 3 and 2 (steps x batch would say 9 an epoch)
    dpo(*quick(tiny_model_dir, out, "--dataset_name", str(FIXTURE), "--per_device_train_batch_size", "3",
               "--num_train_epochs", epochs, "--max_steps", "-1"))
    result = summary(out)
    assert result["steps"] == 3 * int(epochs) and result["pairs_trained"] == pairs
    assert result["train_pairs_per_second"] == pytest.approx(pairs / result["train_seconds"], rel=0.02)  # seconds rounded to 0.01
    stages = list(result["seconds_by_stage"])
    assert stages.index("checking the output folder") < stages.index("loading the data") < stages.index("training")
    assert result["peak_rss_gb"] > 0.1


def test_pairs_trained_stops_where_max_steps_stops(tiny_model_dir, tmp_path):
    out = tmp_path / "run"  # micro-batches of 3, 3, 2 an epoch, 2 a step: the second step ends the epoch with 2 pairs
    dpo(*quick(tiny_model_dir, out, "--dataset_name", str(FIXTURE), "--per_device_train_batch_size", "3",
               "--gradient_accumulation_steps", "2", "--max_steps", "3"))
    assert summary(out)["pairs_trained"] == 6 + 2 + 6  # steps x batch would say 18


def test_the_last_line_names_only_the_files_that_exist(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    dpo(*quick(tiny_model_dir, out, "--dataset_name", str(FIXTURE), "--max_steps", "1", "--plots", "false"))
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"The adapter, metrics and summary.json are in {out}"
    assert not (out / "plots").exists()
    assert outputs_line(tmp_path / "empty").strip() == f"Nothing was written to {tmp_path / 'empty'}."


def test_a_run_whose_rewards_never_move_says_so_at_the_end(tiny_model_dir, tmp_path, caplog):
    out = tmp_path / "run"
    caplog.set_level(logging.WARNING)
    dpo(*quick(tiny_model_dir, out, "--dataset_name", str(FIXTURE), "--max_steps", "2", "--learning_rate", "0"))
    assert summary(out)["rewards_moved"] is False
    assert any("The model did not move" in r.getMessage() for r in caplog.records)
    dpo(*quick(tiny_model_dir, tmp_path / "moved", "--dataset_name", str(FIXTURE), "--max_steps", "3",
               "--learning_rate", "1e-2"))  # warmup: step 1 at lr 0, so step 3 is the first to log a moved model
    assert summary(tmp_path / "moved")["rewards_moved"] is True


def test_rewards_that_never_left_zero_are_told_apart_from_a_run_that_logged_none():
    assert rewards_never_moved([{"loss": 0.69}]) is None
    assert rewards_never_moved([{"rewards/accuracies": 0.5, "rewards/margins": 2e-7}]) is True  # rounding only
    assert rewards_never_moved([{"rewards/accuracies": 0.0}, {"rewards/margins": 0.02}]) is False


def test_the_pre_flight_says_when_steps_times_learning_rate_cannot_move_the_model(tiny_model_dir):
    def findings(*argv):
        args = parse_recipe_args(default_config(__file__, "dpo_lora.yaml"), ["--preset", "lora-cpu", "--config", "",
                                                                             "--model_name_or_path", tiny_model_dir,
                                                                             *argv])
        return [f for f in preflight(*args, probe=False).findings if "sum to a learning rate" in f.reason]

    few = findings("--max_steps", "2")  # lora-cpu: 5e-6 with 10% warmup: the first step at 0
    assert len(few) == 1 and "2 optimizer step(s)" in few[0].reason and "5e-06" in few[0].reason
    assert not findings("--max_steps", "200")


def test_an_output_folder_of_another_run_is_refused_before_the_data_is_read(tiny_model_dir, tmp_path, monkeypatch):
    import dpo_recipes.run.inputs as inputs
    from dpo_recipes.errors import DPORecipesError

    out = tmp_path / "run"
    dpo(*quick(tiny_model_dir, out, "--dataset_name", str(FIXTURE), "--max_steps", "1"))

    def unread(*args, **kwargs):
        raise AssertionError("the data was read before the output folder was checked")

    monkeypatch.setattr(inputs, "load_preference_data", unread)
    with pytest.raises(DPORecipesError, match=r"holds another run \(differs in: beta 0\.1 -> 0\.3"):
        dpo(*quick(tiny_model_dir, out, "--dataset_name", str(FIXTURE), "--max_steps", "2", "--beta", "0.3"))
    with pytest.raises(DPORecipesError, match="is a file"):
        (tmp_path / "file").write_text("x")
        dpo(*quick(tiny_model_dir, tmp_path / "file", "--dataset_name", str(FIXTURE)))


def test_the_training_bar_shows_the_micro_batch_inside_a_step():
    import io
    from types import SimpleNamespace

    from tqdm import tqdm
    from transformers import ProgressCallback

    from dpo_recipes.run.training import MicroBatchProgress

    shown = io.StringIO()
    progress = ProgressCallback()
    progress.training_bar = tqdm(total=2, file=shown, disable=False)  # as Trainer's own bar, whatever TQDM_DISABLE says
    trainer = SimpleNamespace(callback_handler=SimpleNamespace(callbacks=[progress]))
    callback, args = MicroBatchProgress(trainer), SimpleNamespace(gradient_accumulation_steps=3)
    callback.on_step_begin(args, None, None)
    callback.on_substep_end(args, None, None)
    callback.on_substep_end(args, None, None)
    assert "micro-batch 1/3" in shown.getvalue() and "micro-batch 3/3" in shown.getvalue()
