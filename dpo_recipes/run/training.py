"""Training and what watches it: the trainer's guards (non-finite values, preemption), checkpoints with the
umask's modes, W&B with secrets redacted, the health monitor, and TRL's evaluation on held-out pairs."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from transformers import ProgressCallback, TrainerCallback, TrainerState
from transformers.integrations import WandbCallback

from dpo_recipes.errors import DPORecipesError
from dpo_recipes.jsonio import apply_default_modes
from dpo_recipes.run.plan import RunPlan
from dpo_recipes.run.stage import set_stage
from dpo_recipes.train.consumed import ConsumedRows
from dpo_recipes.train.distributed import check_in_effect
from dpo_recipes.train.nonfinite import NonFiniteGuard
from dpo_recipes.train.preemption import handler as preemption_handler
from dpo_recipes.watch.monitor import HealthMonitor
from dpo_recipes.watch.thresholds import parse_thresholds
from dpo_recipes.watch.tracking import (last_checkpoint, prepare_wandb, redacting_wandb_callback, start_wandb_run,
                                        wandb_alert)

logger = logging.getLogger(__name__)


def train(trainer, plan: RunPlan) -> dict:
    """Train (resuming from the plan's checkpoint). Returns TRL's train metrics ({} when nothing was left to train).

    A checkpoint that already reached the last step (the run stopped after training, before its outputs) is loaded
    instead of trained on: Trainer would otherwise run one step past max_steps.
    """
    set_stage("training", trainer=trainer)
    check_in_effect(trainer)
    trainer.add_callback(CheckpointModes())
    trainer.add_callback(MicroBatchProgress(trainer))
    monitor = health_monitor(trainer)
    guard = NonFiniteGuard.attach(trainer)  # RecipeDPOTrainer has it already; TRL's other trainers get it here
    if monitor is not None:
        guard.on_trip = monitor.record_nonfinite_update
    consumed = ConsumedRows.attach(trainer)  # summary.json's pairs_trained: what went through the model
    preemption = preemption_handler().attach(trainer)
    preemption.may_save = lambda: guard.tripped is None and (monitor is None or monitor.nonfinite_step is None)
    _redact_wandb_config(trainer)
    if plan.checkpoint is not None:
        _quiet_resume_notice()
    if plan.checkpoint_complete:
        trainer._load_from_checkpoint(plan.checkpoint)
        trainer.state = TrainerState.load_from_json(str(Path(plan.checkpoint) / "trainer_state.json"))
        logger.info("Training had finished in %s: its outputs are written from it", plan.checkpoint)
        return {}
    result = trainer.train(resume_from_checkpoint=plan.checkpoint)  # RecipeDPOTrainer raises the guard's report itself
    consumed.finish(trainer)
    if guard.tripped is not None:
        raise DPORecipesError(guard.report())
    if monitor is not None and monitor.nonfinite_step is not None:  # the weights may hold that step's update
        clean = last_checkpoint(plan.output_dir)
        raise DPORecipesError(f"Stopped at step {monitor.nonfinite_step}: a logged value was not a number (see the "
                              "warning above); the model is not saved. "
                              + (f"The last clean checkpoint is {clean}." if clean else "No checkpoint was saved."))
    if monitor is not None and monitor.stopped_at_step is not None:
        logger.warning("The health monitor stopped training at step %d (--health_monitor stop); the outputs are saved "
                       "as they are. Rerunning the same command continues from the last checkpoint.",
                       monitor.stopped_at_step)
    stopped = preemption.stopped()
    if stopped is not None:
        raise stopped
    return result.metrics


class MicroBatchProgress(TrainerCallback):
    """The micro-batch a step is at, on Trainer's progress bar ("micro-batch 3/8"): a step of 4 x 8 long pairs takes
    minutes on a CPU, and the bar otherwise moves only when the whole step ends."""

    def __init__(self, trainer):
        self.trainer, self.done = trainer, 0

    def _show(self, args) -> None:
        if args.gradient_accumulation_steps <= 1:
            return
        for callback in self.trainer.callback_handler.callbacks:
            bar = getattr(callback, "training_bar", None) if isinstance(callback, ProgressCallback) else None
            if bar is not None:
                bar.set_postfix_str(f"micro-batch {self.done + 1}/{args.gradient_accumulation_steps}")

    def on_step_begin(self, args, state, control, **kwargs):
        self.done = 0
        self._show(args)

    def on_substep_end(self, args, state, control, **kwargs):
        self.done += 1
        self._show(args)


_RESUME_NOTICE = "The used dataset had no length"


class _DropResumeNotice(logging.Filter):
    """accelerate's gather_for_metrics logs "The used dataset had no length, ... drop the remainder yourself" once per
    call on an epoch's last batch when the loader has no length, which is the case after a resume (the loader that
    skips the batches already trained on). TRL gathers per-process sums and counts there, never per-pair rows, so
    there is no remainder to drop: the line (about nine of them per epoch) says nothing about this run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _RESUME_NOTICE not in record.getMessage()


def _quiet_resume_notice() -> None:
    target = logging.getLogger("accelerate.accelerator")
    if not any(isinstance(f, _DropResumeNotice) for f in target.filters):
        target.addFilter(_DropResumeNotice())


def _redact_wandb_config(trainer) -> None:
    """Swap transformers' WandbCallback for one that logs the arguments without secrets (tracking.redact)."""

    if any(type(c) is WandbCallback for c in trainer.callback_handler.callbacks):
        trainer.remove_callback(WandbCallback)
        trainer.add_callback(redacting_wandb_callback())


def health_monitor(trainer):
    """The trainer's HealthMonitor callback, or None (--health_monitor off)."""
    return next((c for c in trainer.callback_handler.callbacks if isinstance(c, HealthMonitor)), None)


class CheckpointModes(TrainerCallback):
    """Give each checkpoint the umask's modes as it is saved (safetensors writes weights 0o600), not at the end."""

    def on_save(self, args, state, control, **kwargs):
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"  # Trainer's name for the one just saved
        if state.is_world_process_zero and checkpoint.is_dir():
            apply_default_modes(checkpoint)


@dataclass
class Watch:
    """What watches a run: its W&B run (None without W&B) and the health monitor (None with --health_monitor off)."""

    wandb_run: object = None
    monitor: object = None

    @property
    def callbacks(self) -> list:
        """The TrainerCallbacks to pass to the trainer."""
        return [self.monitor] if self.monitor is not None else []


def start_watching(recipe: str, recipe_args, training_args, model_args, plan: RunPlan, data) -> Watch:
    """Start the run's W&B run (offline without a key or network; see `tracking.start_wandb_run`) and its health
    monitor (`dpo_recipes.watch.monitor`), whose alarms also go to W&B as alerts."""
    set_stage("starting the run's tracking")
    thresholds = parse_thresholds(recipe_args.health_thresholds)
    mode = prepare_wandb(training_args.report_to, training_args.output_dir)
    wandb_run = start_wandb_run(recipe, recipe_args, training_args, model_args, plan.record, data.report,
                                resumed_from=plan.checkpoint) if mode is not None and mode != "disabled" else None
    monitor = None
    if recipe_args.health_monitor != "off":
        monitor = HealthMonitor(recipe_args.health_monitor, thresholds,
                                on_alarm=wandb_alert if wandb_run is not None else None)
        if plan.checkpoint:  # a resumed run keeps the alarms raised before its checkpoint
            monitor.restore_alarms(plan.checkpoint)
    return Watch(wandb_run, monitor)


def evaluate(trainer) -> dict:
    """TRL's evaluation on the held-out pairs (eval_loss, eval_rewards/accuracies, eval_rewards/margins, ...) of the
    final weights, saved as eval_results.json and logged like a training step; {} when the run has no eval set."""
    if trainer.eval_dataset is None:
        return {}
    last = trainer.state.log_history[-2:]  # an eval_steps evaluation at the last step, then train()'s totals
    done = [log for log in last if "eval_loss" in log and log.get("step") == trainer.state.global_step]
    if done:  # the eval loop already ran on these weights: not again
        metrics = {k: v for k, v in done[-1].items() if k.startswith("eval_") or k == "epoch"}
    else:
        set_stage("evaluating on the held-out pairs")
        metrics = trainer.evaluate()
    if trainer.is_world_process_zero():
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    return metrics
