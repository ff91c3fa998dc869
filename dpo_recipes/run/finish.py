"""After training: the model saved (adapter, full model, or merged), summary.json, the before/after answers, plots,
the W&B run closed, and the run marked finished so a rerun of the same command trains nothing."""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

from peft import PeftModel

from dpo_recipes.jsonio import apply_default_modes, write_json_atomic
from dpo_recipes.models import merge_adapter
from dpo_recipes.run.inputs import load_model_for
from dpo_recipes.run.model_card import write_model_card
from dpo_recipes.run.plan import RUN_OUTPUTS, RUN_RECORD, RunPlan, wait_for_everyone
from dpo_recipes.run.stage import seconds_by_stage, set_stage
from dpo_recipes.run.training import Watch
from dpo_recipes.train.distributed import distributed_setup
from dpo_recipes.watch.evaluation import general_kl
from dpo_recipes.watch.plots import plot_run
from dpo_recipes.watch.tracking import (checkpoint_step, finish_wandb_run, package_versions, save_log_history,
                                        write_summary)

logger = logging.getLogger(__name__)


def save_outputs(trainer, tokenizer, recipe_args, training_args, metrics: dict) -> None:
    """The trained model (adapter, or full model), TRL's metrics, and a merged model with --merge.

    A `merged/` folder from an earlier adapter is removed when this run does not rebuild it: it would no longer
    match the adapter next to it.
    """
    set_stage("saving")
    out = Path(training_args.output_dir)
    trainer.save_model(str(out))  # the weights and the tokenizer, from the right process(es)
    if not trainer.is_world_process_zero():
        return
    if metrics:
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
    save_log_history(trainer.state.log_history, out)
    merged = out / "merged"
    if recipe_args.merge:
        set_stage("merging the adapter")
        merge_adapter(trainer.model, tokenizer, merged)
    elif merged.exists():
        shutil.rmtree(merged)
        logger.info("Removed %s: it was merged from an earlier adapter (pass --merge to rebuild it)", merged)
    # safetensors writes weights 0o600 whatever the umask: the adapter and checkpoints get the umask's modes too.
    for path in [*out.glob("checkpoint-*"), *(out / name for name in RUN_OUTPUTS)]:
        if path.exists():
            apply_default_modes(path)


def summarize(recipe_args, model_args, model_path: str, data, trainer, plan: RunPlan, train_seconds: float,
              metrics: dict, rows_per_pair: int = 1) -> dict:
    """The summary.json figures every recipe reports: what trained, on what, how fast.

    `rows_per_pair`: training rows made from one pair (KTO unpairs each pair into 2 rows)."""
    args = trainer.args
    steps_run = 0 if plan.checkpoint_complete else trainer.state.global_step - checkpoint_step(plan.checkpoint)
    consumed = getattr(trainer, "consumed_rows", None)
    if consumed is not None and consumed.total is not None and consumed.counted:
        rows = consumed.total  # counted as the trainer collated them (dpo_recipes.train.consumed)
    else:  # no count (dataloader workers): steps x batch, at most the rows of the epochs the steps reach
        rows = steps_run * args.world_size * args.per_device_train_batch_size * args.gradient_accumulation_steps
        per_epoch = len(trainer.train_dataset) if trainer.train_dataset is not None else rows
        epochs = math.ceil(rows / per_epoch) if per_epoch else 1
        rows = min(rows, epochs * per_epoch)
    pairs_trained = rows / rows_per_pair
    return {
        "model": model_path if model_args.model_name_or_path else f"embedded:{model_path}",
        "preset": recipe_args.preset, "dataset": recipe_args.dataset_name, "data_read_as": data.report.detected,
        # pairs_total = pairs_after_validation + sum(pairs_dropped); pairs_used: after --max_train_samples
        "pairs_total": data.report.total_rows, "pairs_after_validation": data.report.kept,
        "pairs_dropped": {rule: n for rule, n in data.report.dropped.items() if n}, "pairs_used": len(data.dataset),
        "steps": trainer.state.global_step, "resumed_from": plan.checkpoint, "train_seconds": round(train_seconds, 2),
        "pairs_trained": pairs_trained,
        "train_pairs_per_second": round(pairs_trained / train_seconds, 3) if train_seconds else None,
        "train_loss": metrics.get("train_loss"),
        "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",  # of the training forward/backward
        "seconds_by_stage": seconds_by_stage(),  # from the recipe's start to this summary
        "peak_rss_gb": peak_rss_gb(),
        **speed_levers(trainer),
        "distributed": distributed_setup(trainer),
        "versions": package_versions(),
        **final_eval_metrics(trainer),
    }


def final_eval_metrics(trainer) -> dict:
    """The last held-out pair evaluation's metrics ({'eval': {...}}, with the step and the rows scored: pairs, or for
    KTO 2 rows a pair), or {} when the run evaluated none."""
    evals = [log for log in trainer.state.log_history if "eval_loss" in log]
    if not evals:
        return {}
    return {"eval": {k.removeprefix("eval_"): v for k, v in evals[-1].items() if k.startswith("eval_")}
            | {"step": evals[-1].get("step"), "rows": len(trainer.eval_dataset) if trainer.eval_dataset else None}}


def speed_levers(trainer) -> dict:
    """What the DPO trainer's speed levers did in this run: tokens the model ran against TRL's two-row layout, and
    the reference cache's pairs found and computed."""
    levers = {}
    if hasattr(trainer, "shared_prompt_tokens"):
        two_rows, run = trainer.shared_prompt_tokens()
        levers["shared_prompt_tokens"] = {"two_row_layout": two_rows, "run": run,
                                          "share": round(run / two_rows, 3) if two_rows else None}
    if getattr(trainer, "lever_check", None) is not None:  # the levers against TRL's own log-probs, first batch
        levers["lever_check"] = trainer.lever_check
    cache = getattr(trainer, "reference_cache", None)
    if cache is not None:
        levers["reference_cache"] = {"pairs_found": cache.hits, "pairs_computed": cache.misses,
                                     "folder": str(cache.directory)}
    return levers


def finish(plan: RunPlan, trainer, summary: dict, before=None, after=None, watch: Watch | None = None,
           plots: bool = True) -> None:
    """Write summary.json (with the drift on general prompts, `evaluation.general_kl`, and the health monitor's
    alarms, the answers' checks included) and the before/after answers, draw the plots, close the W&B run, then mark
    the run finished: a rerun of the same command then trains nothing. Only the main process writes."""
    set_stage("finished")
    if before is not None and before.prompts:  # every process: a ZeRO-3 forward needs all of them
        set_stage("measuring the drift on general prompts")
        summary["general_kl_per_token"] = general_kl(trainer.model, trainer.processing_class, before)
    monitor = watch.monitor if watch is not None else None
    if monitor is not None and before is not None and after is not None and before.prompts:
        monitor.check_answers(before, after, trainer.state.global_step)
    if monitor is not None:
        summary["health"] = monitor.summary()
    still = rewards_never_moved(trainer.state.log_history)
    if still is not None:
        summary["rewards_moved"] = not still
    if not trainer.is_world_process_zero():
        return
    if still:
        logger.warning("The model did not move: every logged %s stayed at 0 over %d step(s). The run trained too "
                       "little (steps x learning rate: see the pre-flight's learning_rate finding); give it more "
                       "steps or a larger learning_rate.", "/".join(_reward_keys(trainer.state.log_history)),
                       trainer.state.global_step)
    write_summary(plan.output_dir, summary, before, after)
    write_model_card(plan.output_dir, summary, plan.record.get("recipe", "dpo_lora"))
    drawn = draw_plots(plan.output_dir) if plots else []
    if watch is not None and watch.wandb_run is not None:
        finish_wandb_run(summary, before, after, monitor.alarms if monitor is not None else (), drawn)
    if trainer.args.push_to_hub:  # the summary, answers and plots too (save_model pushed the weights)
        trainer.push_to_hub(commit_message="dpo-recipes: summary, held-out answers, plots")
    write_json_atomic(plan.output_dir / RUN_RECORD, {**plan.record, "finished_step": trainer.state.global_step})


def peak_rss_gb() -> float | None:
    """This process's peak resident memory so far, in GB (Linux reports KiB), to set beside the pre-flight's
    estimate."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 2)


def _reward_keys(logs: list[dict]) -> list[str]:
    return sorted({k for log in logs for k in log if k.startswith("rewards/") and "eval" not in k})


REWARD_FLOOR = 1e-3  # |beta x log-ratio| under this at every logged step: the policy is still the reference


def rewards_never_moved(logs: list[dict]) -> bool | None:
    """True when every training reward TRL logged (rewards/chosen, rewards/rejected, rewards/margins) stayed within
    REWARD_FLOOR of 0: the policy never left the reference (rounding, or a reference read from the cache, leaves
    ~1e-7; a run that learns reaches 1e-2 within a few steps). Accuracies are not read: on equal rewards they are
    rounding's coin flips. None when no reward was logged."""
    keys = [k for k in _reward_keys(logs) if k != "rewards/accuracies"]
    values = [log[k] for log in logs for k in keys if k in log and isinstance(log[k], (int, float))]
    if not values:
        return None
    return all(abs(v) < REWARD_FLOOR for v in values)


def outputs_line(output_dir) -> str:
    """The run's last line: the outputs that exist in output_dir, and where."""
    out = Path(output_dir)
    present = [label for label, found in (
        ("the adapter", (out / "adapter_model.safetensors").is_file()),
        ("the model", not (out / "adapter_model.safetensors").is_file() and any(out.glob("model*.safetensors"))),
        ("the merged model (merged/)", (out / "merged" / "config.json").is_file()),
        ("metrics", (out / "metrics.jsonl").is_file()), ("summary.json", (out / "summary.json").is_file()),
        ("plots/", (out / "plots").is_dir() and any((out / "plots").iterdir()))) if found]
    if not present:
        return f"\nNothing was written to {out}."
    listed = present[0] if len(present) == 1 else ", ".join(present[:-1]) + " and " + present[-1]
    return f"\n{listed[0].upper() + listed[1:]} {'is' if len(present) == 1 else 'are'} in {out}"


def draw_plots(output_dir: Path) -> list[Path]:
    """The run's PNGs in OUTPUT_DIR/plots (`dpo_recipes.watch.plots`). A plot that fails to draw costs a warning, never
    the finished run."""
    try:
        return plot_run(output_dir)
    except Exception as exc:  # noqa: BLE001 - plots are a view of results already saved
        logger.warning("Plots not drawn (%s: %s); redraw them with `dpo-recipes plot %s`.", type(exc).__name__, exc,
                       output_dir)
        return []


def report_finished(plan: RunPlan, recipe_args=None, training_args=None, model_args=None, model_path=None,
                    tokenizer=None) -> None:
    """Say the run already finished. With --merge and no merged model yet, merge the saved adapter now."""
    print(f"{plan.output_dir}: already finished at step {plan.finished_step}; nothing to train. "
          f"Raise --max_steps to continue it, or --overwrite_output_dir true to train it again.")
    if recipe_args is None or not recipe_args.merge:
        return
    merged = plan.output_dir / "merged"
    if (merged / "config.json").is_file():
        print(f"{merged}: already merged from this adapter.")
        return
    if training_args.process_index == 0:
        base = load_model_for(model_args, training_args, model_path)
        set_stage("merging the adapter")
        merge_adapter(PeftModel.from_pretrained(base, str(plan.output_dir)), tokenizer, merged, copy=False)
        print(f"{merged}: merged the saved adapter into the base model.")
    wait_for_everyone()
