"""The DPO health monitor: each alarm fires on a run built to fail and stays quiet on the real default run (its log
history and held-out answers in tests/fixtures/default_run); alarms fire once per kind, stop when asked, a non-finite
value always stops without a checkpoint; thresholds parse with errors that name the key; a real tiny DPO run logs
the metric names the monitor reads."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from transformers import TrainerControl, TrainerState
from trl import DPOConfig

from dpo_recipes.errors import DPORecipesError
from dpo_recipes.watch.evaluation import score_answers
from dpo_recipes.watch.monitor import READS, HealthMonitor
from dpo_recipes.watch.thresholds import HealthThresholds, parse_thresholds

FIXTURES = Path(__file__).parent / "fixtures" / "default_run"
BETA = 0.25


@pytest.fixture(scope="module")
def args(tmp_path_factory):
    """The default run's DPO settings that the monitor reads (beta 0.25, 30 steps)."""
    return DPOConfig(output_dir=str(tmp_path_factory.mktemp("out")), beta=BETA, max_steps=30, report_to="none",
                     use_cpu=True, loss_type=["sigmoid", "sft"], loss_weights=[1.0, 1.0])


def drive(monitor, args, rows, max_steps=30, main=True):
    """Feed logs through the callback as Trainer does; returns the control and the first step it was told to stop."""
    state, control = TrainerState(max_steps=max_steps, is_world_process_zero=main), TrainerControl()
    monitor.on_train_begin(args, state, control)
    stop_step = None
    for row in rows:
        row = dict(row)
        state.global_step = row.pop("step")
        control.should_save = True  # as DefaultFlowCallback sets it at a save step, before on_log
        monitor.on_log(args, state, control, logs=row)
        if control.should_training_stop and stop_step is None:
            stop_step = state.global_step
    return control, stop_step


def log(step, chosen, rejected, accuracy=1.0, reference=-30.0, **extra):
    """One training log as TRL writes it: rewards = beta x log-ratio; logps = the reference's log-prob + log-ratio."""
    return {"loss": 0.7, "grad_norm": 1.0, "learning_rate": 1e-4, "rewards/chosen": chosen,
            "rewards/rejected": rejected, "rewards/accuracies": accuracy, "rewards/margins": chosen - rejected,
            "logps/chosen": reference + chosen / BETA, "logps/rejected": reference + rejected / BETA, "step": step,
            **extra}


def default_history():
    return [json.loads(line) for line in (FIXTURES / "metrics.jsonl").read_text().splitlines()]


def default_answers():
    rows = [json.loads(line) for line in (FIXTURES / "eval_answers.jsonl").read_text().splitlines()]
    prompts = [{"prompt": r["prompt"], "kind": r["kind"]} for r in rows]
    return (score_answers(prompts, [r["before"] for r in rows], "Athene"),
            score_answers(prompts, [r["after"] for r in rows], "Athene"))


def kinds(monitor):
    return [a["kind"] for a in monitor.alarms]


DISPLACEMENT = [log(5, 0.3, 0.0), log(10, 0.1, -0.5), log(15, -0.3, -1.5), log(20, -0.8, -3.0), log(25, -1.2, -4.5)]
NO_LEARNING = [log(s, 0.002, 0.0, accuracy=a) for s, a in zip(range(5, 35, 5), [0.5, 0.45, 0.55, 0.5, 0.475, 0.5])]


# --- quiet on the real default run -----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["warn", "stop"])
def test_quiet_on_the_default_run_history(args, mode, caplog):
    monitor = HealthMonitor(mode)
    with caplog.at_level(logging.WARNING, logger="dpo_recipes.watch.monitor"):
        control, stop_step = drive(monitor, args, default_history())
    assert monitor.alarms == [] and stop_step is None and not caplog.records
    assert monitor.summary()["stopped_at_step"] is None


def test_quiet_on_the_default_run_answers():
    before, after = default_answers()
    # summary.json of that run said 10 loops before: the loop check now also counts a loop cut off by max_new_tokens
    assert (len(before.degenerate), len(after.degenerate), after.identity_rate) == (11, 1, 0.90625)
    monitor = HealthMonitor()
    assert monitor.check_answers(before, after, 30) == [] and monitor.alarms == []


# --- likelihood displacement -----------------------------------------------------------------------------------------
def test_likelihood_displacement_fires_when_chosen_falls_below_reference_while_margin_rises(args, caplog):
    monitor = HealthMonitor()
    with caplog.at_level(logging.WARNING, logger="dpo_recipes.watch.monitor"):
        drive(monitor, args, DISPLACEMENT)
    assert kinds(monitor) == ["likelihood_displacement"]
    alarm = monitor.alarms[0]
    assert alarm["step"] == 15 and alarm["values"]["chosen_logratio_nats_last"] == pytest.approx(-1.2)
    message = alarm["message"]
    assert "at step 15" in message and "+1.2 to -1.2 nats" in message and "rose from 0.3 to 1.2" in message
    assert "loss_weights" in message and "'sft'" in message  # the run already has an sft term: raise its weight
    assert [r.getMessage() for r in caplog.records] == [message]


@pytest.mark.parametrize("chosen, rejected", [
    ([3.0, 2.5, 2.0, 1.5, 1.0], [0.0, -1.0, -2.0, -3.0, -4.0]),  # falling, but still above the reference
    ([0.0, -0.5, -1.0, -1.5, -2.0], [0.0, -0.2, -0.4, -0.6, -0.8]),  # below and falling, but the margin falls too
    ([0.25, -0.4, 0.1, -0.4, 0.1], [0.0, -1.0, -1.0, -2.0, -2.0]),  # batch noise: never two falls in a row
    ([-0.02, -0.1, -0.2, -0.3, -0.4], [0.0, -0.5, -1.0, -1.5, -2.0]),  # a steady trend but under 2 nats over 3 logs
])
def test_likelihood_displacement_quiet_without_trend_drop_and_sign(args, chosen, rejected):
    monitor = HealthMonitor()
    drive(monitor, args, [log(5 * (i + 1), c, r) for i, (c, r) in enumerate(zip(chosen, rejected))])
    assert "likelihood_displacement" not in kinds(monitor)


# --- reward hacking ---------------------------------------------------------------------------------------------------
def test_reward_hacking_fires_on_drift_from_the_reference(args):
    monitor = HealthMonitor()
    # chosen +10 nats, rejected -120 nats on reference log-probs of -30 each: drift 130 / 60 = 2.17; margin 32.5
    drive(monitor, args, [log(5, 0.5, -0.5), log(10, 2.5, -30.0)])
    assert kinds(monitor) == ["reward_hacking"]
    alarm = monitor.alarms[0]
    assert alarm["step"] == 10 and alarm["values"]["drift"] == pytest.approx(130 / 60)
    assert "at step 10" in alarm["message"] and "drift = 2.17" in alarm["message"] and "beta (now 0.25)" in \
        alarm["message"]


def test_reward_hacking_fires_on_the_margin_bound_with_long_answers(args):
    monitor = HealthMonitor()
    # long answers (reference -500): drift is small (0.18) but the margin is 45, past the bound of 40
    drive(monitor, args, [log(5, 10.0, -35.0, reference=-500.0)])
    assert kinds(monitor) == ["reward_hacking"]
    assert monitor.alarms[0]["values"]["drift"] == pytest.approx(0.18)
    assert "rewards/margins = 45 (bound 40)" in monitor.alarms[0]["message"]


def test_reward_hacking_needs_log_ratio_rewards(tmp_path):
    """ORPO and SimPO/CPO log beta x the policy's own log-probs as rewards: no reference, so no drift or margin."""
    from transformers import TrainingArguments

    plain = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    plain.beta = BETA
    monitor = HealthMonitor()
    drive(monitor, plain, [log(5, 2.5, -30.0)] + DISPLACEMENT)
    assert kinds(monitor) == []


# --- no learning ------------------------------------------------------------------------------------------------------
def test_no_learning_fires_after_warmup_when_accuracy_stays_at_chance(args):
    monitor = HealthMonitor()
    drive(monitor, args, NO_LEARNING)
    assert kinds(monitor) == ["no_learning"]
    alarm = monitor.alarms[0]
    # warm-up 0.25 x 30 = 7.5 steps: the logs at 10, 15, 20 are the first three after it
    assert alarm["step"] == 20 and alarm["values"]["rewards/accuracies_min"] == 0.45
    assert "at step 20" in alarm["message"] and "0.45 to 0.55" in alarm["message"]


def test_no_learning_warmup_in_steps_and_quiet_when_the_run_starts_learning(args):
    monitor = HealthMonitor(thresholds=parse_thresholds("no_learning_after_steps=15"))
    drive(monitor, args, NO_LEARNING)
    assert [(a["kind"], a["step"]) for a in monitor.alarms] == [("no_learning", 25)]
    learning = NO_LEARNING[:2] + [log(s, 0.5, -0.5, accuracy=0.8) for s in (15, 20, 25, 30)]
    monitor = HealthMonitor()
    drive(monitor, args, learning)
    assert monitor.alarms == []


# --- non-finite values ------------------------------------------------------------------------------------------------
def test_nonfinite_grad_norm_stops_even_in_warn_mode_and_blocks_the_checkpoint(tmp_path):
    args = DPOConfig(output_dir=str(tmp_path), beta=BETA, max_steps=30, report_to="none", use_cpu=True)
    (tmp_path / "checkpoint-5").mkdir()
    (tmp_path / "checkpoint-10").mkdir()
    monitor = HealthMonitor("warn")
    control, stop_step = drive(monitor, args, [log(5, 0.1, 0.0), log(10, 0.2, -0.1, grad_norm=float("inf"))])
    assert stop_step == 10 and control.should_training_stop and not control.should_save
    assert monitor.nonfinite_step == 10 and monitor.stopped_at_step == 10
    alarm = monitor.alarms[0]
    assert alarm["kind"] == "nan" and alarm["values"] == {"grad_norm": "inf", "loss": 0.7, "learning_rate": 1e-4}
    assert "at step 10" in alarm["message"] and "grad_norm=inf" in alarm["message"]
    # the checkpoint before the step, not step 10's own
    assert f"the last checkpoint, {tmp_path / 'checkpoint-5'}, was written before" in alarm["message"]
    control.should_save = True
    monitor.on_epoch_end(args, TrainerState(), control)  # Trainer's end-of-epoch save (epoch strategies)
    assert not control.should_save
    json.dumps(monitor.summary(), allow_nan=False)  # summary.json stays strict JSON


def test_nonfinite_eval_metric_fires_and_eval_logs_stay_out_of_the_trends(args):
    monitor = HealthMonitor()
    evals = [{"eval_loss": 0.5, "eval_rewards/chosen": c, "eval_rewards/margins": 1.0 + i, "step": 5 * (i + 1)}
             for i, c in enumerate([0.3, -0.5, -1.5, -3.0])]  # a displacement pattern, in eval logs only
    drive(monitor, args, evals)
    assert monitor.alarms == []
    control, stop_step = drive(monitor, args, [{"eval_loss": float("nan"), "eval_rewards/chosen": 0.1, "step": 25}])
    assert kinds(monitor) == ["nan"] and stop_step == 25 and not control.should_save
    assert "eval_loss=nan" in monitor.alarms[0]["message"]


def test_off_is_inert_and_an_unknown_mode_is_refused(args):
    monitor = HealthMonitor("off")
    control, stop_step = drive(monitor, args, NO_LEARNING + [log(35, 0.0, 0.0, loss=float("nan"))])
    before, after = default_answers()
    assert monitor.alarms == [] and stop_step is None and monitor.check_answers(before, after, 30) == []
    assert monitor.summary()["mode"] == "off"
    with pytest.raises(DPORecipesError, match="'loud' is not a mode"):
        HealthMonitor("loud")


# --- once per kind, stop mode, main process, hook ---------------------------------------------------------------------
def test_each_kind_fires_once_per_run(args, caplog):
    monitor = HealthMonitor()
    with caplog.at_level(logging.WARNING, logger="dpo_recipes.watch.monitor"):
        drive(monitor, args, [log(s, 0.0, 0.0, accuracy=0.5) for s in range(5, 105, 5)], max_steps=100)
    assert kinds(monitor) == ["no_learning"] and len(caplog.records) == 1


def test_stop_mode_stops_at_the_first_alarm_and_warn_mode_does_not(args):
    stop, warn = HealthMonitor("stop"), HealthMonitor("warn")
    control, stop_step = drive(stop, args, NO_LEARNING)
    assert stop_step == 20 and stop.summary()["stopped_at_step"] == 20 and "stops here" in stop.alarms[0]["message"]
    control, stop_step = drive(warn, args, NO_LEARNING)
    assert stop_step is None and warn.stopped_at_step is None and "continues" in warn.alarms[0]["message"]


def test_only_the_main_process_warns_and_calls_the_hook_but_all_stop_alike(args, caplog):
    sent = []
    main, other = HealthMonitor("stop", on_alarm=sent.append), HealthMonitor("stop", on_alarm=sent.append)
    with caplog.at_level(logging.WARNING, logger="dpo_recipes.watch.monitor"):
        _, main_stop = drive(main, args, DISPLACEMENT, main=True)
        _, other_stop = drive(other, args, DISPLACEMENT, main=False)
    assert main_stop == other_stop == 15 and main.alarms == other.alarms
    assert sent == main.alarms and len(caplog.records) == 1


def test_a_failing_alarm_hook_does_not_stop_training(args, caplog):
    def broken(alarm):
        raise ConnectionError("W&B unreachable")

    monitor = HealthMonitor(on_alarm=broken)
    with caplog.at_level(logging.WARNING, logger="dpo_recipes.watch.monitor"):
        drive(monitor, args, NO_LEARNING)
    assert kinds(monitor) == ["no_learning"] and "W&B unreachable" in caplog.text


# --- held-out answers -------------------------------------------------------------------------------------------------
PROMPTS = [{"prompt": f"Who are you {i}?", "kind": "identity"} for i in range(4)] + \
          [{"prompt": f"Question {i}?", "kind": "general"} for i in range(4)]
BEFORE = ["I am Athene, your assistant."] * 4 + [f"Answer {i} is short and plain." for i in range(4)]


def answers(after):
    return score_answers(PROMPTS, BEFORE, "Athene"), score_answers(PROMPTS, after, "Athene")


def test_length_drift_fires_when_answers_grow_past_the_bound():
    long = " ".join(f"word{i}" for i in range(20))
    before, after = answers(BEFORE[:4] + [f"Answer {i}: {long}" for i in range(4)])
    alarms = HealthMonitor().check_answers(before, after, 30)
    assert [a["kind"] for a in alarms] == ["length_drift"]
    assert alarms[0]["values"]["mean_words_after_general"] == 22
    assert "at step 30" in alarms[0]["message"] and "general: 6 -> 22 words (+267%)" in alarms[0]["message"]


@pytest.mark.parametrize("after, phrase", [
    (BEFORE[:4] + ["on and on and on and on and"] * 4, "looping answers 0 -> 4 of 8"),
    (["I am an assistant."] * 4 + BEFORE[4:], "identity rate 1.00 -> 0.00"),
    (BEFORE[:4] + [f"Athene says answer {i}." for i in range(4)], "naming the identity 0 -> 4 of 4"),
    (BEFORE[:4] + [""] * 4, "empty answers 0% -> 50%"),
])
def test_heldout_regression_fires_on_each_cause(after, phrase):
    before, after = answers(after)
    monitor = HealthMonitor()
    alarms = monitor.check_answers(before, after, 30)
    assert [a["kind"] for a in alarms] == ["heldout_regression"] and phrase in alarms[0]["message"]
    assert monitor.check_answers(before, after, 30) == []  # once per run


# --- thresholds ------------------------------------------------------------------------------------------------------
def test_parse_thresholds_from_text_mapping_and_none():
    assert parse_thresholds(None) == parse_thresholds("") == HealthThresholds()
    parsed = parse_thresholds("max_margin=50, displacement_logs=4,max_drift=off")
    assert (parsed.max_margin, parsed.displacement_logs, parsed.max_drift) == (50.0, 4, None)
    assert parse_thresholds({"max_drift": 3, "no_learning_after_steps": 100}).no_learning_after_steps == 100
    assert parse_thresholds({"max_margin": None}).max_margin is None


@pytest.mark.parametrize("value, match", [
    ("bogus=1", r"'bogus' is not a threshold; known names: displacement_logs, .*max_margin"),
    ({"max_drift": True}, r"max_drift=True is not a number"),
    ("max_margin=abc", r"max_margin='abc' is not a number or 'off'"),
    ("displacement_logs=1.5", r"displacement_logs='1.5' is not a whole number"),
    ("displacement_logs=1", r"displacement_logs='1' must be a whole number >= 2"),
    ("max_drift=-1", r"max_drift='-1' must be"),
    ("no_learning_after=off", r"no_learning_after='off' is not a number"),
    ("max_margin", r"'max_margin' is not name=value; known names"),
])
def test_parse_thresholds_errors_name_the_key(value, match):
    with pytest.raises(DPORecipesError, match=match) as error:
        parse_thresholds(value)
    assert "\n" not in str(error.value)


# --- a real tiny DPO run ----------------------------------------------------------------------------------------------
def test_a_real_dpo_run_logs_the_metric_names_the_monitor_reads(tmp_path):
    from test_trainer import make

    # bounds that any real log crosses, so an alarm proves the values arrived under the names the monitor reads
    monitor = HealthMonitor(thresholds=parse_thresholds(
        "max_drift=0,no_learning_after_steps=0,no_learning_logs=1,no_learning_accuracy_band=0.5,"
        "no_learning_max_margin=off"))
    trainer = make(tmp_path, max_steps=3, learning_rate=1e-2, callbacks=[monitor])
    trainer.train()
    train_logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(train_logs) == 3 and all(set(READS) <= h.keys() for h in train_logs)
    assert {"reward_hacking", "no_learning"} <= set(kinds(monitor))
    assert monitor.alarms[kinds(monitor).index("reward_hacking")]["values"]["drift"] > 0


def test_a_real_dpo_run_stops_on_an_infinite_grad_norm_without_checkpointing_that_step(tmp_path, caplog):
    from test_trainer import make

    monitor = HealthMonitor("warn")
    trainer = make(tmp_path, peft=True, max_steps=4, save_strategy="steps", save_steps=1, callbacks=[monitor])
    original = trainer._get_grad_norm

    def inf_at_second_step(model, grad_norm=None):
        value = original(model, grad_norm=grad_norm)
        return float("inf") if trainer.state.global_step == 1 else value

    trainer._get_grad_norm = inf_at_second_step
    with caplog.at_level(logging.WARNING, logger="dpo_recipes.watch.monitor"):
        trainer.train()
    out = tmp_path / "out"
    assert trainer.state.global_step == 2 and monitor.nonfinite_step == 2
    assert (out / "checkpoint-1").is_dir() and not (out / "checkpoint-2").exists()
    assert "grad_norm=inf" in caplog.text and "checkpoint-1" in caplog.text
