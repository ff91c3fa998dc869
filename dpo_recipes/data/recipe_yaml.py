"""The data settings the data commands (`dpo-recipes validate | audit | show | convert`) take: their defaults, and
the data keys of a recipe's YAML (`--config`), read as the recipe reads them (paths relative to the YAML's folder)."""

from __future__ import annotations

from dpo_recipes.errors import DPORecipesError
from dpo_recipes.shipped import resolve_yaml_paths


# Recipe YAML key -> the CLI option (argparse dest) it sets; the same names as the recipe's RecipeArguments.
CONFIG_KEYS = {"dataset_name": "path", "dataset_train_split": "split", "data_format": "format",
               "column_map": "column_map", "validation": "validation", "min_chosen_chars": "min_chosen_chars",
               "min_rejected_chars": "min_rejected_chars", "max_similarity": "max_similarity",
               "drop_truncated": "drop_truncated", "max_length": "max_length", "model_name_or_path": "model"}


# Values when neither the YAML nor a flag sets them (rule thresholds come from ValidationConfig).
DATA_DEFAULTS = {"path": None, "model": None, "split": "train", "format": None, "column_map": None, "validation": "strict",
                 "max_length": None, "min_chosen_tokens": None, "min_rejected_tokens": None,
                 "keep_duplicates": False, "allow_score_ties": False}


# Types a recipe YAML value may have, per key (None: the key may be null).
CONFIG_TYPES = {"dataset_name": (str,), "dataset_train_split": (str,), "data_format": (str, type(None)),
                 "column_map": (str, dict, type(None)), "validation": (str,), "min_chosen_chars": (int,),
                 "min_rejected_chars": (int,), "max_similarity": (int, float, type(None)), "drop_truncated": (bool,),
                 "max_length": (int, type(None)), "model_name_or_path": (str, type(None))}


def read_recipe_yaml(path: str) -> dict:
    """The data keys of a recipe's YAML (`CONFIG_KEYS`), checked; one line naming the file when it is unusable."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f)
    except OSError as exc:
        raise DPORecipesError(f"--config {path}: cannot read the file ({exc.strerror or exc}).") from None
    except UnicodeDecodeError as exc:
        raise DPORecipesError(f"--config {path}: not UTF-8 text ({exc.reason}).") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).strip().splitlines()[0]
        raise DPORecipesError(f"--config {path}: invalid YAML{where} ({problem}).") from None
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise DPORecipesError(f"--config {path}: the YAML file must hold a mapping of key: value, not a "
                              f"{type(config).__name__}.")
    config = resolve_yaml_paths(config, path)  # data paths relative to the YAML, as the recipe reads them
    values = {}
    for key in CONFIG_KEYS:
        if key not in config:
            continue
        value, types = config[key], CONFIG_TYPES[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            names = {int: "an integer", float: "a number", str: "a string", dict: "a mapping", bool: "true or false",
                     type(None): "null"}
            expected = " or ".join(names[t] for t in types if not (t is int and float in types))
            raise DPORecipesError(f"--config {path}: {key} must be {expected}, got {value!r}.")
        values[key] = value
    return values


def data_settings(args) -> dict:
    """Data options and rule thresholds: ValidationConfig defaults < the --config YAML < flags typed here."""
    from dpo_recipes.data import ValidationConfig

    d = ValidationConfig()
    settings = {**DATA_DEFAULTS, "min_chosen_chars": d.min_chosen_chars, "min_rejected_chars": d.min_rejected_chars,
                "max_similarity": d.max_similarity, "drop_truncated": d.drop_truncated, "workers": d.workers}
    if args.config:
        settings.update({CONFIG_KEYS[key]: value for key, value in read_recipe_yaml(args.config).items()})
    typed = vars(args)  # options a YAML can set default to SUPPRESS: present only when given
    settings.update({k: v for k, v in typed.items() if k in settings and k != "path"})
    if args.path:
        settings["path"] = args.path
    if not settings["path"]:
        where = f" ({args.config} has no dataset_name)" if args.config else ""
        raise DPORecipesError(f"{args.command}: no data given{where}; pass the data PATH, or --config RECIPE.yaml "
                              "with a dataset_name.")
    if "max_length" in typed and args.tokenizer is None:
        raise DPORecipesError("--max-length needs --tokenizer to count tokens.")
    return settings
