"""Reading a recipe's command line before TRL's parser does: one spelling per flag, the value of a flag, the
--config flag taken out, and a misspelled flag or YAML key refused in one line naming the nearest argument."""

from __future__ import annotations

from dpo_recipes.errors import DPORecipesError


def _cli_value(argv: list[str], flag: str) -> str | None:
    """The value given to `--flag` on the command line (`--flag v` or `--flag=v`), else None."""
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def nearest_argument(name: str, known) -> str | None:
    """The known argument nearest to a misspelled one by edit distance (`per_device_train_batchsize` ->
    `per_device_train_batch_size`), or None when nothing is close: at most a third of the name's length in edits,
    and at least 2 allowed."""
    from rapidfuzz import process
    from rapidfuzz.distance import Levenshtein

    name = name.lstrip("-").replace("-", "_")
    found = process.extractOne(name, list(known), scorer=Levenshtein.distance,
                               score_cutoff=max(2, len(name) // 3))
    return found[0] if found else None


def unknown_arguments(parser, argv: list[str], config: dict, config_path: str | None) -> None:
    """Refuse, in one line naming the nearest known one, a YAML key or a command-line flag the recipe has no argument
    for (TRL's parser would say 'add them to the dataclass, or set fail_with_unknown_args=False')."""
    known = {option[2:] for action in parser._actions for option in action.option_strings if option.startswith("--")}
    known |= {action.dest for action in parser._actions} | {"config", "env"}
    for key in config:
        if key not in known:
            near = nearest_argument(key, known)
            raise DPORecipesError(f"--config {config_path}: {key!r} is not an argument of this recipe"
                                  + (f"; did you mean {near!r}?" if near else "; remove it.")
                                  + " (--help lists the arguments).")
    for arg in argv:
        if arg.startswith("--"):
            flag = arg[2:].split("=", 1)[0]
            if flag not in known:
                near = nearest_argument(flag, known)
                raise DPORecipesError(f"--{flag} is not an argument of this recipe"
                                      + (f"; did you mean --{near}?" if near else ".")
                                      + " (--help lists the arguments).")


def _without_config_flag(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--config":
            skip = True
        elif not arg.startswith("--config="):
            out.append(arg)
    return out


def canonical_flags(parser, argv: list[str]) -> list[str]:
    """`argv` with each flag in its underscore spelling (`--dataset-name` -> `--dataset_name`, as the parser also
    accepts), and abbreviations refused by the parser from now on: what the recipe reads from the command line before
    parsing (which YAML applies, the preset, the output folder, each value's source) sees every flag as parsed."""
    parser.allow_abbrev = False  # '--learning_rat 1e-2' would set learning_rate unseen by those reads
    canonical = {option: "--" + action.dest for action in parser._actions for option in action.option_strings
                 if option.startswith("--") and option[2:].replace("-", "_") == action.dest}
    out = []
    for arg in argv:
        flag, eq, value = arg.partition("=")
        out.append(canonical.get(flag, flag) + eq + value if arg.startswith("--") else arg)
    return out
