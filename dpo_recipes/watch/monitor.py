"""DPO health monitor: a TrainerCallback that warns, once per kind, about the quiet ways DPO fails.

Alarm kinds, what each reads, and why (every threshold is a field of `HealthThresholds`):

- `nan`: a non-finite *loss, grad_norm, rewards/*, logps/* or logits/* value in any log, training or `eval_`. Stops
  the run at once in every mode and keeps Trainer from writing a checkpoint at that step.
- `likelihood_displacement`: the chosen answers lose likelihood against the reference while the margin grows (the
  rejected answers fall faster). Read from `rewards/chosen / beta`, the chosen log-ratio policy minus reference in
  nats per answer, not from `logps/chosen`: each log averages different batches, and a summed log-prob follows the
  batch's answer lengths (the default run's logps/chosen fell 3.4 nats at step 30 while its log-ratio rose), where
  the log-ratio subtracts the reference's log-prob of the same tokens.
- `reward_hacking`: the margin, or the policy's drift from the reference on the training answers, past a bound.
  TRL 1.16 logs no KL for sigmoid DPO; the proxy `drift` is defined at `HealthThresholds.max_drift`.
- `no_learning`: rewards/accuracies near 0.5 and margins near 0 for several logs after warm-up.
- `length_drift`, `heldout_regression`: the held-out answers before and after training (`check_answers`).

The log-ratio checks (displacement, drift, the margin bound) run for trainers whose `rewards/*` are beta times a
log-ratio to a reference: TRL's DPOConfig and KTOConfig. ORPO and SimPO/CPO log beta times the policy's own
log-probs there, so only the NaN and no-learning checks apply to them.

Trainer calls `on_log` on every process with the same gathered values, so every process records the same alarms and
takes the same stop decision; only the main process writes the warning and calls `on_alarm`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from dpo_recipes.errors import DPORecipesError
from dpo_recipes.train.nonfinite import last_checkpoint_before
from dpo_recipes.watch.thresholds import HealthThresholds

logger = logging.getLogger(__name__)  # "dpo_recipes.watch.monitor"

MODES = ("warn", "stop", "off")
KINDS = ("nan", "likelihood_displacement", "reward_hacking", "no_learning", "length_drift", "heldout_regression")
# The training metrics the trend checks read: the names TRL's DPOTrainer logs (tested against a real run).
READS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
         "logps/chosen", "logps/rejected")
NONFINITE_PREFIXES = ("rewards/", "logps/", "logits/")


class HealthMonitor(TrainerCallback, ExportableState):
    """Watches a DPO run's logs (and, through `check_answers`, its held-out answers) and raises each alarm once.

    Args:
        mode: "warn" logs each alarm; "stop" also stops training at the first one (the answers' alarms come after
            training and stop nothing); "off" makes the monitor inert (it checks and records nothing, so it can be
            added unconditionally). A non-finite value stops the run in every mode but "off".
        thresholds: a `HealthThresholds` (defaults when None); see `parse_thresholds`.
        on_alarm: called with each new alarm dict on the main process (e.g. to send it to W&B); its errors are
            logged, never raised into training.

    Attributes: `alarms` (dicts with kind, step, message, values; non-finite values stored as strings so the list
    is strict JSON), `stopped_at_step` (the step the monitor stopped training at, or None) and `nonfinite_step`
    (the step a non-finite value appeared at: the live model may be poisoned there, do not publish it as trained).
    """

    def __init__(self, mode: str = "warn", thresholds: HealthThresholds | None = None,
                 on_alarm: Callable[[dict], None] | None = None):
        if mode not in MODES:
            raise DPORecipesError(f"health_monitor={mode!r} is not a mode; use one of {list(MODES)}.")
        self.mode = mode
        self.thresholds = thresholds or HealthThresholds()
        self.on_alarm = on_alarm
        self.alarms: list[dict] = []
        self.stopped_at_step: int | None = None
        self.nonfinite_step: int | None = None
        self._points: list[dict] = []  # training logs that carry the rewards metrics, in order
        self._main: bool | None = None  # from TrainerState once seen

    # --- Trainer events ------------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        self._main = state.is_world_process_zero

    def on_log(self, args, state, control, logs=None, **kwargs):
        """Check one log: every value for non-finite numbers, training logs also for the trends."""
        if self.mode == "off" or not logs:
            return
        self._main = state.is_world_process_zero
        step = state.global_step
        bad = {k: v for k, v in logs.items() if _watched(k) and _number(v) and not math.isfinite(v)}
        if bad:
            self._nonfinite(args, control, logs, bad, step)
            return
        point = {k: float(logs[k]) for k in READS if _number(logs.get(k))}
        if "rewards/margins" not in point:  # eval logs carry eval_ keys only; the final train summary none
            return
        self._points.append({**point, "step": step, "learning_rate": logs.get("learning_rate")})
        beta = getattr(args, "beta", None)
        if _log_ratio_rewards(args) and _number(beta) and beta > 0:
            self._check_displacement(args, control, beta)
            self._check_drift(args, control, beta)
        self._check_no_learning(args, state, control, beta if _number(beta) and beta > 0 else None)

    def on_step_end(self, args, state, control, **kwargs):
        self._keep_poison_out(control)

    def on_epoch_end(self, args, state, control, **kwargs):
        self._keep_poison_out(control)  # Trainer saves/evaluates once more after the loop breaks (epoch strategies)

    def _keep_poison_out(self, control) -> None:
        if self.nonfinite_step is not None:
            control.should_save = False
            control.should_evaluate = False
            control.should_training_stop = True

    # --- per-log checks -----------------------------------------------------------------------------------------
    def _nonfinite(self, args, control, logs: dict, bad: dict, step: int) -> None:
        self.nonfinite_step = step if self.nonfinite_step is None else self.nonfinite_step
        self._keep_poison_out(control)
        clean = last_checkpoint_before(getattr(args, "output_dir", None), step)
        where = (f"the last checkpoint, {clean}, was written before this value appeared, so it is clean" if clean
                 else "no checkpoint was written before it")
        lr = f" (now {logs['learning_rate']:.3g})" if _number(logs.get("learning_rate")) else ""
        clip = getattr(args, "max_grad_norm", None)
        clip = f"max_grad_norm {clip:g} or lower" if _number(clip) and clip > 0 else "max_grad_norm 1.0 (now off)"
        values = {**bad, **{k: logs[k] for k in ("loss", "learning_rate") if k not in bad and _number(logs.get(k))}}
        self._alarm("nan", step, values, control, force_stop=True, text=(
            f"non-finite {_show(bad)}. Training stops now whatever --health_monitor says, and no checkpoint is "
            f"written at this step; {where}. Usually fp16 overflow, a learning rate too high or a broken batch. "
            f"Try: bf16 or fp32 instead of fp16, a lower learning_rate{lr}, {clip}, and `dpo-recipes validate` on "
            "the data."))

    def record_nonfinite_update(self, step: int, values: dict, text: str, control=None) -> None:
        """The non-finite guard's finding (`dpo_recipes.train.nonfinite`) as this monitor's 'nan' alarm: training
        stops."""
        if self.mode == "off":
            return
        self.nonfinite_step = step if self.nonfinite_step is None else self.nonfinite_step
        if control is not None:
            self._keep_poison_out(control)
        self._alarm("nan", step, values, control, force_stop=True, text=text)

    def _check_displacement(self, args, control, beta: float) -> None:
        t, n = self.thresholds, self.thresholds.displacement_logs
        window = self._points[-n:]
        if t.displacement_min_drop is None or len(window) < n:
            return
        ratios = [p["rewards/chosen"] / beta for p in window]
        falling = all(b < a for a, b in zip(ratios, ratios[1:]))
        if not (falling and ratios[0] - ratios[-1] >= t.displacement_min_drop and ratios[-1] < 0
                and window[-1]["rewards/margins"] > window[0]["rewards/margins"]):
            return
        loss_types = [args.loss_type] if isinstance(getattr(args, "loss_type", None), str) \
            else list(getattr(args, "loss_type", None) or [])
        sft = ("raise the weight of your 'sft' term in loss_weights" if "sft" in loss_types
               else "add an SFT term (loss_type: [sigmoid, sft] with loss_weights, as the default preset does)")
        first, last = window[0], window[-1]
        values = {"chosen_logratio_nats_first": ratios[0], "chosen_logratio_nats_last": ratios[-1],
                  "rewards/margins_first": first["rewards/margins"], "rewards/margins_last": last["rewards/margins"],
                  "logps/chosen_last": last.get("logps/chosen"), "beta": beta}
        self._alarm("likelihood_displacement", last["step"], values, control, text=(
            f"the chosen answers' log-ratio to the reference (rewards/chosen / beta) fell at each of {n} logs "
            f"(steps {first['step']}-{last['step']}) from {ratios[0]:+.3g} to {ratios[-1]:+.3g} nats per answer, "
            f"while rewards/margins rose from {first['rewards/margins']:.3g} to {last['rewards/margins']:.3g}. Both "
            "answers are losing likelihood and the margin grows only because the rejected ones fall faster: loss and "
            "accuracy can look perfect while the chosen answer is not learned. "
            f"Try: {sft}, a DPOP-style penalty on the chosen log-ratio, or a lower learning_rate"
            f"{_lr(last)}. Tune: --health_thresholds displacement_min_drop=..."))

    def _check_drift(self, args, control, beta: float) -> None:
        t, p = self.thresholds, self._points[-1]
        values, over = {"rewards/margins": p["rewards/margins"], "beta": beta}, []
        if t.max_margin is not None and p["rewards/margins"] > t.max_margin:
            over.append(f"rewards/margins = {p['rewards/margins']:.3g} (bound {t.max_margin:g})")
        if all(k in p for k in ("rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected")):
            chosen, rejected = p["rewards/chosen"] / beta, p["rewards/rejected"] / beta
            reference = abs(p["logps/chosen"] - chosen) + abs(p["logps/rejected"] - rejected)
            if reference > 0:
                drift = (abs(chosen) + abs(rejected)) / reference
                values |= {"drift": drift, "mean_abs_logratio_nats": (abs(chosen) + abs(rejected)) / 2}
                if t.max_drift is not None and drift > t.max_drift:
                    over.append(f"drift = {drift:.3g} (bound {t.max_drift:g}: the log-probs of the training answers "
                                f"moved {drift:.3g}x the reference's own NLL of them; chosen {chosen:+.3g}, rejected "
                                f"{rejected:+.3g} nats per answer)")
        if not over:
            return
        self._alarm("reward_hacking", p["step"], values, control, text=(
            f"{' and '.join(over)}. The policy is moving far from the reference on the training answers, the usual "
            "start of reward hacking or collapse (answers that game the implicit reward, lose fluency or loop). "
            f"Try: a higher beta (now {beta:g}) to stay closer to the reference, a lower learning_rate{_lr(p)}, "
            "fewer steps, or an SFT term; read the held-out answers. Tune: --health_thresholds max_margin=...,"
            "max_drift=..."))

    def _check_no_learning(self, args, state, control, beta: float | None) -> None:
        t, n = self.thresholds, self.thresholds.no_learning_logs
        if t.no_learning_accuracy_band is None:
            return
        after = t.no_learning_after_steps if t.no_learning_after_steps is not None \
            else t.no_learning_after * (state.max_steps or 0)
        window = [p for p in self._points[-n:] if p["step"] >= after and "rewards/accuracies" in p]
        if len(window) < n:
            return
        accuracy = [p["rewards/accuracies"] for p in window]
        margins = [p["rewards/margins"] for p in window]
        if any(abs(a - 0.5) > t.no_learning_accuracy_band for a in accuracy):
            return
        if beta is not None and t.no_learning_max_margin is not None \
                and any(abs(m) / beta >= t.no_learning_max_margin for m in margins):
            return
        first, last = window[0], window[-1]
        values = {"rewards/accuracies_min": min(accuracy), "rewards/accuracies_max": max(accuracy),
                  "rewards/margins_min": min(margins), "rewards/margins_max": max(margins), "warmup_steps": after}
        self._alarm("no_learning", last["step"], values, control, text=(
            f"after warm-up (step {after:g} of {state.max_steps}), rewards/accuracies stayed at {_span(accuracy)} "
            f"and rewards/margins at {_span(margins)} "
            f"for {n} logs (steps {first['step']}-{last['step']}). The policy is not separating chosen from "
            "rejected: usually a learning rate too low for the setup (LoRA ~1e-4 to 5e-4, full fine-tuning ~5e-7 "
            "to 5e-6), parameters that do not train, or pairs with no consistent signal. "
            f"Try: a higher learning_rate{_lr(last)}, check the trainable parameters, and `dpo-recipes audit` / "
            "`dpo-recipes validate` on the data."))

    # --- after training: the held-out answers -------------------------------------------------------------------
    def check_answers(self, before, after, step: int) -> list[dict]:
        """Compare the held-out answers before and after training (`watch.evaluation.EvalResult`s of the same
        prompts); returns the alarms this call raised (length_drift, heldout_regression)."""
        if self.mode == "off" or not before.prompts:
            return []
        if len(before.answers) != len(after.answers):
            raise DPORecipesError(f"check_answers needs the same prompts before and after; got {len(before.answers)} "
                                  f"and {len(after.answers)} answers.")
        start = len(self.alarms)
        self._check_lengths(before, after, step)
        self._check_regression(before, after, step)
        return self.alarms[start:]

    def _check_lengths(self, before, after, step: int) -> None:
        bound = self.thresholds.max_length_growth
        if bound is None:
            return
        groups = {"all": range(len(before.prompts))}
        for kind in sorted({p["kind"] for p in before.prompts}):
            groups[kind] = [i for i, p in enumerate(before.prompts) if p["kind"] == kind]
        values, grown = {}, []
        for name, indexes in groups.items():
            was = sum(len(before.answers[i].split()) for i in indexes) / len(indexes)
            now = sum(len(after.answers[i].split()) for i in indexes) / len(indexes)
            values |= {f"mean_words_before_{name}": was, f"mean_words_after_{name}": now}
            if was >= 1 and now / was - 1 > bound:
                grown.append(f"{name}: {was:.3g} -> {now:.3g} words (+{now / was - 1:.0%})")
        if grown:
            self._alarm("length_drift", step, values, None, text=(
                f"the held-out answers' mean length grew past +{bound:.0%} ({'; '.join(grown)}; words are "
                "whitespace-separated). DPO often learns 'longer is better' when the chosen answers are longer than "
                "the rejected ones. Try: `dpo-recipes audit` on the data to measure that length gap, --loss_hook "
                "rdpo or ld_alpha to control length, a higher beta, or fewer steps. "
                "Tune: --health_thresholds max_length_growth=..."))

    def _check_regression(self, before, after, step: int) -> None:
        t, n = self.thresholds, len(before.prompts)
        general = [i for i, p in enumerate(before.prompts) if p["kind"] == "general"]
        empty = [sum(not a.split() for a in result.answers) / n for result in (before, after)]
        degenerate = [len(before.degenerate) / n, len(after.degenerate) / n]
        values = {"degenerate_before": len(before.degenerate), "degenerate_after": len(after.degenerate),
                  "identity_rate_before": before.identity_rate, "identity_rate_after": after.identity_rate,
                  "leaks_before": len(before.leaks), "leaks_after": len(after.leaks),
                  "empty_share_before": empty[0], "empty_share_after": empty[1], "prompts": n}
        found = []
        if t.max_degenerate_increase is not None and degenerate[1] - degenerate[0] > t.max_degenerate_increase:
            found.append(f"looping answers {len(before.degenerate)} -> {len(after.degenerate)} of {n}")
        if (t.max_identity_drop is not None and before.identity_rate is not None and after.identity_rate is not None
                and before.identity_rate - after.identity_rate > t.max_identity_drop):
            found.append(f"identity rate {before.identity_rate:.2f} -> {after.identity_rate:.2f}")
        if (t.max_leak_increase is not None and general
                and (len(after.leaks) - len(before.leaks)) / len(general) > t.max_leak_increase):
            found.append(f"general answers naming the identity {len(before.leaks)} -> {len(after.leaks)} of "
                         f"{len(general)}")
        if t.max_empty_increase is not None and empty[1] - empty[0] > t.max_empty_increase:
            found.append(f"empty answers {empty[0]:.0%} -> {empty[1]:.0%}")
        if found:
            self._alarm("heldout_regression", step, values, None, text=(
                f"the held-out answers got worse: {'; '.join(found)}. Training damaged behaviour it was not meant to "
                "change (overfitting, or a policy pushed too far from the reference). Try: fewer steps or a lower "
                "learning_rate, a higher beta, an SFT term, and read the before/after table. Tune: "
                "--health_thresholds max_degenerate_increase=...,max_identity_drop=...,max_leak_increase=...,"
                "max_empty_increase=..."))

    # --- recording ----------------------------------------------------------------------------------------------
    def _alarm(self, kind: str, step: int, values: dict, control, text: str, force_stop: bool = False) -> None:
        """Record the alarm once per kind, warn and call on_alarm on the main process, stop when asked to."""
        stop = control is not None and (force_stop or self.mode == "stop")
        if stop:
            control.should_training_stop = True
            self.stopped_at_step = step if self.stopped_at_step is None else self.stopped_at_step
        if any(a["kind"] == kind for a in self.alarms):
            return
        if control is None or force_stop:
            note = ""
        else:
            note = (" Training stops here (--health_monitor stop)." if stop else
                    " Training continues (--health_monitor warn; 'stop' would end the run at an alarm).")
        when = " (held-out answers, after training)" if control is None else ""
        message = f"DPO health alarm '{kind}' at step {step}{when}: {text}{note}"
        alarm = {"kind": kind, "step": step, "message": message,
                 "values": {k: _json_number(v) for k, v in values.items() if v is not None}}
        self.alarms.append(alarm)
        if not self._is_main():
            return
        logger.warning(message)
        if self.on_alarm is not None:
            try:
                self.on_alarm(alarm)
            except Exception as exc:  # an alert that cannot be sent must not stop training
                logger.warning("The health alarm hook failed: %s", exc)

    def _is_main(self) -> bool:
        return self._main if self._main is not None else os.environ.get("RANK", "0") == "0"

    def state(self) -> dict:
        """What each checkpoint's trainer_state.json keeps of the monitor (Trainer saves ExportableState callbacks):
        the alarms so far, so that a resumed run still reports them (`restore_alarms`)."""
        return {"args": {"mode": self.mode}, "attributes": {"alarms": [dict(a) for a in self.alarms]}}

    def restore_alarms(self, checkpoint: str | os.PathLike) -> None:
        """Take the alarms a checkpoint's trainer_state.json recorded (the run before a resume), each marked
        `before_resume`: they stay in the summary, and their kinds do not warn again in the same run."""
        import json

        try:
            saved = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
        except (OSError, ValueError):
            return
        earlier = saved.get("stateful_callbacks", {}).get(type(self).__name__, {})
        earlier = earlier[0] if isinstance(earlier, list) and earlier else earlier  # one entry, or a list of them
        for alarm in (earlier.get("attributes", {}).get("alarms", []) if isinstance(earlier, dict) else []):
            if not any(a["kind"] == alarm.get("kind") for a in self.alarms):
                self.alarms.append({**alarm, "before_resume": True})

    def summary(self) -> dict:
        """What summary.json records: mode, thresholds, alarms and the step the monitor stopped training at."""
        return {"mode": self.mode, "thresholds": asdict(self.thresholds), "alarms": [dict(a) for a in self.alarms],
                "stopped_at_step": self.stopped_at_step}


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _watched(key: str) -> bool:
    """Every *loss (loss, eval_loss, eval_NAME_loss, nll_loss, ...), grad_norm, rewards/*, logps/*, logits/*."""
    base = key.removeprefix("eval_")
    return base.endswith("loss") or base == "grad_norm" or base.startswith(NONFINITE_PREFIXES)


def _log_ratio_rewards(args) -> bool:
    """Whether the trainer's rewards/* are beta x (policy - reference) log-probs: TRL's DPO and KTO configs."""
    from trl import DPOConfig, KTOConfig

    return isinstance(args, (DPOConfig, KTOConfig))


def _show(values: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if _number(v) else f"{k}={v}" for k, v in values.items())


def _span(values: list[float]) -> str:
    low, high = f"{min(values):.3g}", f"{max(values):.3g}"
    return low if low == high else f"{low} to {high}"


def _lr(point: dict) -> str:
    return f" (now {point['learning_rate']:.3g})" if _number(point.get("learning_rate")) else ""


def _json_number(value):
    """Floats as they are, non-finite ones as 'nan'/'inf'/'-inf': summary.json stays strict JSON."""
    return str(value) if _number(value) and not math.isfinite(value) else value
