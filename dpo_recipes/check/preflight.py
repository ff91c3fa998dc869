"""The pre-flight check: parse a config exactly as the recipe would, name every setting TRL 1.16, PEFT or this
project's layer will ignore or override, flag risky combinations, and estimate memory and time, before any weights.

    dpo-recipes check recipes/configs/dpo_lora.yaml
    dpo-recipes check my.yaml --recipe dpo_full --strict -- --learning_rate 1e-6
    dpo-recipes check my.yaml --data        # also the data's token lengths against max_length (loads the tokenizer)

Recipes call `check_before_run` before any model work (`--preflight warn|strict|off`). The rules live in `rules`
(each citing the TRL / PEFT condition it mirrors), the estimate in `estimate`, the value types in `findings`.
Module-level imports stay light: the CLI imports this module to build its parser.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import warnings

from dpo_recipes.check.findings import (
    LEVELS,
    RECIPES,
    SAMPLE,
    Finding,
    PreflightReport,
    Setup,
)
from dpo_recipes.errors import DPORecipesError

logger = logging.getLogger(__name__)

def recipe_config_class(recipe: str):
    """The recipe's trainer config class (DPOConfig, ORPOConfig, CPOConfig or KTOConfig)."""
    import importlib

    if recipe not in RECIPES:
        raise DPORecipesError(f"--recipe {recipe!r}: known recipes are {', '.join(RECIPES)}.")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # ORPO and CPO live in trl.experimental
    module, name = RECIPES[recipe]["config"]
    return getattr(importlib.import_module(module), name)


def parse_config(config: str, recipe: str = "dpo_lora", argv: list[str] | tuple = ()) -> tuple[tuple, list[Finding]]:
    """Parse CONFIG.yaml (+ recipe flags `argv`) exactly as recipes/RECIPE.py does: `parse_recipe_args` with the
    recipe's config classes, variant and preset. Keys the recipe's parser does not know are taken out and returned as
    error findings (the recipe would stop on them) instead of stopping the check, so the rest is still checked."""
    import dataclasses
    import tempfile

    import yaml

    from dpo_recipes.check.rules import KEY_HINTS
    from dpo_recipes.config.arguments import (
        RecipeArguments,
        RecipeModelConfig,
        parse_recipe_args,
        read_yaml_config,
    )
    from dpo_recipes.config.flags import nearest_argument

    spec = RECIPES.get(recipe)
    types = (RecipeArguments, recipe_config_class(recipe), RecipeModelConfig)
    raw = read_yaml_config(config)
    known = {f.name for t in types for f in dataclasses.fields(t) if f.init} | {"env"}  # TrlParser reads env too
    unknown = [k for k in raw if k not in known]
    findings = [Finding("error", k, raw[k], f"yaml:{config}",
                        f"not an argument of recipes/{recipe}.py: the recipe stops on it"
                        + (f"; {KEY_HINTS[k]}." if k in KEY_HINTS else "."),
                        f"did you mean {near}?" if (near := nearest_argument(k, known)) else "remove it")
                for k in unknown]
    path = config
    if unknown:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False, encoding="utf-8") as tmp:
            yaml.safe_dump({k: v for k, v in raw.items() if k in known}, tmp)
        path = tmp.name
    try:
        with warnings.catch_warnings():  # deprecations (TRL's own gradient_checkpointing default too): findings say
            warnings.simplefilter("ignore", FutureWarning)  # what matters for this config
            parsed = parse_recipe_args(None, ["--config", path, *argv], types, recipe=recipe,
                                       variant=spec["variant"], preset=spec["preset"])
    finally:
        if path != config:
            os.unlink(path)
    sources = parsed[0].value_sources
    for key, source in sources.items():  # name the user's file, not the filtered copy
        if source == f"yaml:{path}":
            sources[key] = f"yaml:{config}"
    return parsed, findings


def load_data_for(recipe_args, training_args, model_args, recipe: str):
    """The validated training data and the tokenizer, loaded as the recipe loads them (run.load_train_data)."""
    from dpo_recipes.data import load_preference_data
    from dpo_recipes.models import load_tokenizer, resolve_model_path

    tokenizer = load_tokenizer(resolve_model_path(model_args.model_name_or_path), model_args.model_revision,
                               training_args.trust_remote_code)
    data = load_preference_data(
        recipe_args.dataset_name, split=recipe_args.dataset_train_split, data_format=recipe_args.data_format,
        column_map=recipe_args.column_map, validation=recipe_args.validation, config=recipe_args.validation_config(),
        tokenizer=tokenizer, max_length=training_args.max_length, drop_prompt_too_long=True,
        allow_unpaired=recipe == "kto")
    dataset = data.dataset
    if recipe_args.max_train_samples and recipe_args.max_train_samples < len(dataset):
        dataset = dataset.select(range(recipe_args.max_train_samples))
    return dataset, tokenizer


def _text(value) -> str:
    """A completion's text: a string, or the contents of a list of messages (as the validation rules count it)."""
    if isinstance(value, list):
        return "\n".join(str(m.get("content") or "") for m in value)
    return value or ""


def data_layout(dataset, tokenizer, s: Setup) -> dict:
    """Token lengths of the data as the recipe's trainer lays it out, over a seeded sample of up to SAMPLE pairs.

    `pair_tokens`: prompt + longer answer per pair (what max_length must hold); `positions` / `completions`: mean token
    positions the model runs / the LM head scores per pair (KTO: per row), capped at max_length, padding not counted;
    `positions_max` / `completions_max`: the most a pair runs / scores (a batch pads to its longest pair: the memory
    peak); `units`: pairs (KTO:
    rows) in the data; `steps`: optimizer steps the run makes on them. Pairs the data layer tokenized (their
    `prompt_ids` / `chosen_ids` / `rejected_ids`) are all measured from those ids, with no tokenizing."""
    import random

    from dpo_recipes.data.lengths import (
        TOKEN_COLUMNS,
        completion_token_counts,
        prompt_token_counts,
        trainer_prompt_lengths,
    )

    n = len(dataset)
    cap = s.args.max_length or math.inf
    tokenized = all(name in dataset.column_names for name in TOKEN_COLUMNS) and s.trainer == "dpo"
    rows = dataset if tokenized or n <= SAMPLE else dataset.select(sorted(random.Random(0).sample(range(n), SAMPLE)))
    if "completion" in rows.column_names and not tokenized:  # KTO's unpaired rows: one answer a row
        prompts = prompt_token_counts(rows["prompt"], tokenizer)
        answers = completion_token_counts([_text(c) for c in rows["completion"]], tokenizer)
        pair_tokens = [p + c for p, c in zip(prompts, answers)]
        positions = [min(p + c, cap) for p, c in zip(prompts, answers)]
        completions = [min(p + c, cap) - min(p, cap) for p, c in zip(prompts, answers)]
        units = n
    else:
        if tokenized:  # the data layer's ids: TRL's own lengths for every pair, no tokenizing
            import pyarrow.compute as pc

            table = dataset.with_format("arrow")
            prompts, chosen, rejected = (pc.list_value_length(table[name]).to_pylist() for name in TOKEN_COLUMNS)
        else:
            tools = rows["tools"] if "tools" in rows.column_names else None
            prompts = trainer_prompt_lengths(rows["prompt"], rows["chosen"], rows["rejected"], tokenizer, tools)
            chosen = completion_token_counts([_text(c) for c in rows["chosen"]], tokenizer)
            rejected = completion_token_counts([_text(r) for r in rows["rejected"]], tokenizer)
        pair_tokens = [p + max(c, r) for p, c, r in zip(prompts, chosen, rejected)]
        two = [min(p + c, cap) + min(p + r, cap) for p, c, r in zip(prompts, chosen, rejected)]
        completions = [t - 2 * min(p, cap) for t, p in zip(two, prompts)]
        positions = [t - min(p, cap) for t, p in zip(two, prompts)] if _sharing(s) else two
        units = n
        if s.trainer == "kto":  # each pair becomes a desirable and an undesirable row (recipes/kto.py)
            positions, completions, units = [x / 2 for x in two], [x / 2 for x in completions], 2 * n
    from dpo_recipes.train.steps import planned_steps

    return {"pair_tokens": pair_tokens, "positions": statistics.fmean(positions) if positions else 0,
            "positions_max": max(positions, default=0),
            "completions": statistics.fmean(completions) if completions else 0,
            "completions_max": max(completions, default=0), "units": units,
            "sampled": len(rows), "steps": planned_steps(s.args, units) if units else 0}


def _sharing(s: Setup) -> bool:
    """Whether the trainer runs each pair's prompt once (shared-prompt packing: dpo_recipes.train.shared_prompt)."""
    return (s.trainer == "dpo" and s.recipe_args.share_prompts and not s.args.use_liger_kernel and s.model is not None
            and not s.model.get("shared_prompt_off"))


def preflight(recipe_args, training_args, model_args, recipe: str = "dpo_lora", dataset=None, tokenizer=None, *,
              fetch_config: bool = False, probe: bool = True) -> PreflightReport:
    """Check parsed arguments without loading weights (~0.5 s the first time for a model, then cached; the data check
    adds the tokenizing of up to SAMPLE pairs). `dataset` + `tokenizer`: also check max_length against the data's
    pair lengths and estimate from them. `fetch_config`: read a hub model's config.json from the hub when it is not
    in the local cache. `probe`: time a ~0.2 s matmul for the time estimate."""
    from dpo_recipes.check import estimate as preflight_estimate
    from dpo_recipes.check import rules as preflight_rules

    recipe_config_class(recipe)  # an unknown recipe fails here, in one line
    s = Setup(recipe, recipe_args, training_args, model_args)
    facts, problem = preflight_estimate.model_facts(model_args, training_args, fetch=fetch_config)
    s.model = facts
    if dataset is not None and tokenizer is not None and len(dataset):
        s.data = data_layout(dataset, tokenizer, s)
    findings = sorted(preflight_rules.check(s), key=lambda f: LEVELS.index(f.level))
    if facts is not None and facts.get("lora_problem"):
        findings.insert(0, s.find("error", lora_setting(facts["lora_problem"]), f"PEFT cannot build the adapter: "
                                  f"{facts['lora_problem']}"))
    estimate = preflight_estimate.estimate(s, facts, problem, probe=probe)
    findings += preflight_estimate.memory_findings(estimate, s)
    # A preset's or a default's value that goes unused is no setting of the user's (e.g. the LoRA preset's lora_r
    # under use_peft: false): not reported, so that --strict stops only on what the config or command line set.
    findings = [f for f in findings if f.level != "ignored" or f.source == "cli" or f.source.startswith("yaml:")]
    findings.sort(key=lambda f: LEVELS.index(f.level))
    report = PreflightReport(recipe, findings, estimate)
    report._table = preflight_estimate.table(estimate, s)
    return report


# What PEFT's LoraConfig error names -> the recipe setting to blame (peft 0.21 LoraConfig.__post_init__ messages).
LORA_SETTINGS = (("`r`", "lora_r"), ("lora_alpha", "lora_alpha"), ("dropout", "lora_dropout"),
                 ("layers_to_transform", "lora_top_fraction"), ("target_parameters", "lora_target_parameters"),
                 ("modules_to_save", "lora_modules_to_save"), ("rslora", "use_rslora"), ("dora", "use_dora"))


def lora_setting(problem: str) -> str:
    """The setting a PEFT LoraConfig error is about; lora_target_modules when it names none of the others."""
    return next((setting for needle, setting in LORA_SETTINGS if needle in problem), "lora_target_modules")


def check_config(config: str, recipe: str = "dpo_lora", argv: list[str] | tuple = (), data: bool = False,
                 fetch_config: bool = False) -> PreflightReport:
    """`dpo-recipes check`: parse CONFIG as the recipe would, optionally load its data, and run the check."""
    (recipe_args, training_args, model_args), findings = parse_config(config, recipe, argv)
    dataset = tokenizer = None
    if data and recipe_args.dataset_name:
        dataset, tokenizer = load_data_for(recipe_args, training_args, model_args, recipe)
    report = preflight(recipe_args, training_args, model_args, recipe, dataset, tokenizer, fetch_config=fetch_config)
    if data and not recipe_args.dataset_name:
        findings.append(Finding("note", "dataset_name", None, recipe_args.value_sources.get("dataset_name", "-"),
                                "no data named: --data checked nothing."))
    report.findings = sorted(findings + report.findings, key=lambda f: LEVELS.index(f.level))
    report.config = config
    return report


def check_before_run(recipe_args, training_args, model_args, recipe: str, dataset=None,
                     tokenizer=None) -> PreflightReport | None:
    """What a recipe runs before any model work, as `recipe_args.preflight` says: off -> None; warn -> log the table
    and the findings (errors at ERROR level: what the recipe or TRL will refuse, with its own message, later);
    strict -> also raise DPORecipesError, one line, on any error, ignored or risky finding."""
    mode = getattr(recipe_args, "preflight", "warn")
    if mode == "off":
        return None
    report = preflight(recipe_args, training_args, model_args, recipe, dataset, tokenizer)
    if int(os.environ.get("RANK", "0")) == 0:  # one copy of the report in a multi-process run
        logger.info("pre-flight check (--preflight %s)\n%s", mode, report.table())
        log = {"error": logger.error, "ignored": logger.warning, "risky": logger.warning, "note": logger.info}
        for f in report.findings:
            log[f.level]("pre-flight %s", f.line())
    stops = report.of("error", "ignored", "risky") if mode == "strict" else []
    if stops:
        listed = "; ".join(f"{f.setting} {f.level}" for f in stops)
        raise DPORecipesError(f"pre-flight check (--preflight strict): {listed}. Fix them, or --preflight warn to run "
                              "anyway (reasons: the log above, or dpo-recipes check CONFIG).")
    return report


def _add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", choices=list(RECIPES), default="dpo_lora",
                        help="the recipe that will run the config (default: dpo_lora)")
    parser.add_argument("--strict", action="store_true",
                        help="exit 2 when any setting is ignored or risky, not only on errors")
    parser.add_argument("--data", action="store_true",
                        help="also load the data and tokenizer as the recipe does: max_length against the pairs' "
                             "token lengths, and the estimate from them")
    parser.add_argument("--fetch-config", action="store_true",
                        help="read a hub model's config.json from the hub when it is not cached (one small download)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`dpo-recipes check CONFIG.yaml [--recipe R] [--strict] [--data] [--fetch-config] [-- recipe flags]`."""
    parser.add_argument("config", metavar="CONFIG.yaml", help="the recipe's YAML config (as --config takes it)")
    _add_options(parser)
    parser.add_argument("recipe_flags", nargs=argparse.REMAINDER, metavar="-- FLAGS",
                        help="recipe flags, as on the recipe's command line (e.g. -- --learning_rate 1e-4)")


def run(args) -> int:
    """Print the estimate and the findings; 0 when nothing stops the run, else raise (the CLI prints `error: ...`
    and exits 2)."""
    rest = list(args.recipe_flags or [])
    # Options typed after CONFIG land in the remainder: take this command's own back, the rest are recipe flags.
    mine, flags = (rest[:rest.index("--")], rest[rest.index("--") + 1:]) if "--" in rest else (rest, [])
    own = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    _add_options(own)
    extra, unknown = own.parse_known_args(mine, namespace=argparse.Namespace(**vars(args)))
    report = check_config(args.config, extra.recipe, unknown + flags, data=extra.data, fetch_config=extra.fetch_config)
    print(report.text())
    if report.errors or (extra.strict and report.warnings):
        stops = report.of("error") + (report.of("ignored", "risky") if extra.strict else [])
        names = ", ".join(dict.fromkeys(f.setting for f in stops))
        raise DPORecipesError(f"check{' --strict' if extra.strict else ''}: {len(stops)} finding"
                              f"{'s' if len(stops) != 1 else ''} stop the run ({names}); see above.")
    return 0
