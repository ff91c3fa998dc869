"""The path every recipe shares around its trainer, in the order a recipe calls it:

    tokenizer, model_path = run.load_tokenizer_for(model_args, training_args)  # inputs: cheap, no weights yet
    run.check_before_data(recipe, recipe_args, training_args, model_args, model_path)  # settings, output folder
    data = run.load_train_data(recipe_args, training_args, tokenizer)         # validated; every dropped pair counted
    prompts = run.check_before_model(recipe_args, training_args, model_args, data.dataset, tokenizer)  # checks
    plan = run.plan_output_dir(recipe, recipe_args, training_args, model_args, model_path, data)       # plan
    if plan.finished_step is not None: return run.report_finished(plan)      # "already finished at step N"
    watch = run.start_watching(...); model = run.load_model_for(...)         # training / inputs
    metrics = run.train(trainer, plan)                                        # training: guards, preemption
    run.save_outputs(trainer, tokenizer, recipe_args, training_args, metrics)  # finish
    run.finish(plan, trainer, run.summarize(...), before, after, watch)

Why each step exists:
- Everything that can fail without the data fails before it is read, and everything that can fail without the model
  fails before it is loaded (a 7B model takes minutes to load, and the
  before-training evaluation as long again).
- An output folder is resumed only when it holds an unfinished run of the same model, data and training settings.
  A finished run is not trained again. Anything else is refused in one line naming what differs.
- Outputs keep the user's umask, and a merged model left from an earlier adapter is never left next to a new one.

Modules: `stage` (where the run is; errors, Ctrl-C and preemption as one line), `inputs`, `checks`, `plan`,
`training`, `finish`. This file only names what recipes call.
"""

from dpo_recipes.run.checks import check_before_data, check_before_model
from dpo_recipes.run.finish import (draw_plots, final_eval_metrics, finish, outputs_line, report_finished,
                                    save_outputs, speed_levers, summarize)
from dpo_recipes.run.inputs import load_eval_data, load_model_for, load_tokenizer_for, load_train_data, pairs_only
from dpo_recipes.run.plan import (RUN_OUTPUTS, RUN_RECORD, RunPlan, clear_run_outputs, data_fingerprint,
                                  model_identity, plan_output_dir, run_record)
from dpo_recipes.run.stage import recipe_errors, set_stage
from dpo_recipes.run.training import CheckpointModes, Watch, evaluate, health_monitor, start_watching, train

__all__ = ["RUN_OUTPUTS", "RUN_RECORD", "CheckpointModes", "RunPlan", "Watch", "check_before_data",
           "check_before_model", "clear_run_outputs", "data_fingerprint", "draw_plots", "evaluate",
           "final_eval_metrics", "finish", "health_monitor", "load_eval_data", "load_model_for",
           "load_tokenizer_for", "load_train_data", "model_identity", "outputs_line", "pairs_only",
           "plan_output_dir", "recipe_errors", "report_finished", "run_record", "save_outputs", "set_stage",
           "speed_levers", "start_watching", "summarize", "train"]
