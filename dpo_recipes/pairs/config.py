"""The arguments of `recipes/make_pairs.py`, parsed like the other recipes': `--config FILE.yaml`, then CLI flags."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from dpo_recipes.config.arguments import apply_yaml, read_yaml_config
from dpo_recipes.config.flags import _cli_value, canonical_flags
from dpo_recipes.errors import DPORecipesError


@dataclass
class PairsArguments:
    """What to answer, with which model, how to judge the answers, and where the pairs go."""

    prompts_file: str | None = field(
        default=None, metadata={"help": "JSONL of prompts: 'prompt' (string or messages), optional 'reference' and "
                                "'check' (see dpo_recipes.pairs.prompts)."})
    output_file: str | None = field(
        default=None, metadata={"help": "Where the pairs go (.jsonl); the work file, report and summary go beside it "
                                "(NAME.work.jsonl, NAME.report.json, NAME.summary.json)."})
    mode: str = field(
        default="correction", metadata={"help": "correction: one greedy answer a prompt, a wrong one is rejected; "
                                        "best-of-n: k sampled answers, best vs worst.",
                                        "choices": ["correction", "best-of-n"]})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "The student: a model folder, a LoRA adapter folder (loaded on its base), or "
                                "a hub id. Unset: the embedded SmolLM2-135M-Instruct."})
    dtype: str = field(default="float32", metadata={"help": "Weights dtype of the student, teacher and reward model."})
    verifier: str | None = field(
        default="exact", metadata={"help": "The default check: exact, numeric, one_word, lowercase, a JSON object "
                                   "('{\"type\": \"numeric\", \"tolerance\": 0.01}'), module:function, or none "
                                   "(every row has a 'check'). A row's 'check' replaces it."})
    chosen_source: str = field(
        default="reference", metadata={"help": "correction: where the chosen answer comes from.",
                                       "choices": ["reference", "teacher", "rewrite"]})
    teacher_model: str | None = field(
        default=None, metadata={"help": "Local model folder (or adapter folder) answering as teacher; its answer must "
                                "pass the check."})
    rewrite_template: str | None = field(
        default=None, metadata={"help": "chosen_source rewrite: the chosen answer, e.g. 'The answer is {reference}.'"})
    scorer: str = field(
        default="verifier", metadata={"help": "best-of-n: verifier, a reward-model folder (sequence classifier, one "
                                      "label), or module:function returning a float."})
    k: int = field(default=4, metadata={"help": "best-of-n: answers sampled a prompt."})
    temperature: float = field(default=0.8, metadata={"help": "best-of-n: sampling temperature (> 0)."})
    top_p: float = field(default=0.95, metadata={"help": "best-of-n: nucleus sampling mass (0, 1]."})
    seed: int = field(default=0, metadata={"help": "best-of-n: run seed; each prompt's samples are seeded from it and "
                                           "the prompt's index."})
    min_margin: float = field(default=0.0, metadata={"help": "best-of-n: skip pairs whose score gap is below this."})
    batch_size: int = field(default=8, metadata={"help": "Prompts answered at once (best-of-n: batch_size * k "
                                                 "sequences); also the unit of resuming."})
    max_new_tokens: int = field(default=128, metadata={"help": "Tokens generated an answer at most."})
    output_format: str = field(
        default="auto", metadata={"help": "auto: conversational when the model has a chat template, else plain.",
                                  "choices": ["auto", "conversational", "plain"]})
    max_prompts: int | None = field(default=None, metadata={"help": "Use only the first N prompts (quick runs)."})
    overwrite: bool = field(
        default=False, metadata={"help": "Start again: remove this output's pairs, work file, report and summary."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})


def _refuse(message: str):
    raise DPORecipesError(f"{message} (--help lists the arguments).")


def parse_pairs_args(default_config: str | Path | None = None, argv: list[str] | None = None) -> PairsArguments:
    """Parse `argv`: YAML (`--config`, or `default_config` when neither --config nor --prompts_file is given) < CLI."""
    from trl import TrlParser

    parser = TrlParser((PairsArguments,))
    parser.error = _refuse
    # '--prompts-file X' and '--prompts_file X' are one flag, and abbreviations are refused: the default YAML must
    # not apply under a prompts file given in another spelling.
    argv = canonical_flags(parser, list(sys.argv[1:] if argv is None else argv))
    if default_config is not None and "--config" not in argv and not any(
            a == "--prompts_file" or a.startswith("--prompts_file=") for a in argv):
        argv = ["--config", str(default_config), *argv]
    config_path = _cli_value(argv, "--config")
    config = read_yaml_config(config_path) if config_path else {}  # input paths resolved against the YAML's folder
    argv = apply_yaml(parser, argv, config, config_path)
    try:
        (args,) = parser.parse_args_and_config(argv)
    except (ValueError, OSError) as exc:
        raise DPORecipesError(f"Invalid arguments: {exc}") from None
    if not args.prompts_file or not args.output_file:
        raise DPORecipesError("Pass --prompts_file PROMPTS.jsonl and --output_file PAIRS.jsonl (or --config).")
    return args
