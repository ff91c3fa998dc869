#!/usr/bin/env python
"""Make preference pairs from prompts with the model itself: correction pairs or best/worst-of-n.

    python recipes/make_pairs.py                                   # configs/make_pairs.yaml: SmolLM2 on arithmetic
    python recipes/make_pairs.py --prompts_file my.jsonl --output_file out/pairs.jsonl --verifier numeric
    python recipes/make_pairs.py --config recipes/configs/make_pairs_best_of_n.yaml --k 8
    python recipes/dpo_lora.py --dataset_name out/pairs.jsonl --min_chosen_chars 1 --min_rejected_chars 1 \\
        --max_similarity null                                      # then train on them

Prompts file (JSONL, one object a line; see dpo_recipes.pairs.prompts):
    {"prompt": "What is 6 * 7?", "reference": "42"}
    {"prompt": [{"role": "user", "content": "Capital of France?"}], "reference": "Paris",
     "check": {"type": "exact", "ignore_case": true}}
    {"prompt": "Name and age as JSON.", "check": {"type": "json_keys", "keys": ["name", "age"]}}
`prompt` is a string or messages; `reference` is optional; a row's `check` replaces --verifier for that row (types:
exact, numeric, regex, one_word, json_keys, lowercase, ends_with, all, python; see dpo_recipes.pairs.rules).

--mode correction: the model answers each prompt greedily; an answer failing the check becomes the rejected answer,
and the chosen one is the teacher's (--chosen_source teacher --teacher_model DIR; it must pass the check), the
reference, or --rewrite_template over it ('The answer is {reference}.'). Correct answers make no pair (counted).
--mode best-of-n: k answers sampled a prompt (seeded per prompt), scored by --scorer (verifier, a reward-model
folder, or module:function); the best against the worst, unless they tie or differ by less than --min_margin.

Writes OUT (the pairs, conversational when the model has a chat template, with score_chosen/score_rejected), and
beside it NAME.work.jsonl (answers, appended per batch: a killed run, rerun with the same command, resumes there),
NAME.report.json (the validation report of the pairs as training reads them) and NAME.summary.json (settings, every
skip reason counted, speed). Exit status: 0 with pairs; 2 with one line on stderr for any refusal, including a run
that made no pair ("all 40 answers were correct: no pair to make"), which writes no OUT.

Where the values come from: configs/make_pairs.yaml beside this file (else the shipped one), then the command line.
"""

import dataclasses
import logging

import transformers

from dpo_recipes import run
from dpo_recipes.models import resolve_model_path
from dpo_recipes.pairs import check_output, load_policy, load_prompts, make_pairs, pairs_paths, save_pairs, summary_text
from dpo_recipes.pairs.config import PairsArguments, parse_pairs_args
from dpo_recipes.pairs.make import check_settings
from dpo_recipes.shipped import default_config

DEFAULT_CONFIG = default_config(__file__, "make_pairs.yaml")  # beside this file, else the shipped one


def main(args: PairsArguments):
    # 1. Logging -----------------------------------------------------------------------------------------------------
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()

    # 2. Before any model work: prompts, every row's check, the settings, the output files ---------------------------
    run.set_stage("reading the prompts")
    prompts = load_prompts(args.prompts_file, args.max_prompts)
    settings = dict(mode=args.mode, verifier=args.verifier, scorer=args.scorer, k=args.k, temperature=args.temperature,
                    top_p=args.top_p, seed=args.seed, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                    chosen_source=args.chosen_source, rewrite_template=args.rewrite_template,
                    min_margin=args.min_margin, output_format=args.output_format)
    check_settings(prompts, teacher_model=args.teacher_model, **settings)
    use_teacher = args.mode == "correction" and args.chosen_source == "teacher"
    if use_teacher:
        resolve_model_path(args.teacher_model)  # a mistyped folder fails now, not after the student is loaded
    paths = pairs_paths(args.output_file)
    check_output(paths, args.overwrite)

    # 3. Models: the student (the embedded SmolLM2 when unset; an adapter folder loads on its base), the teacher -----
    run.set_stage("loading the models")
    model, tokenizer, model_name = load_policy(args.model_name_or_path, dtype=args.dtype)
    teacher, teacher_tokenizer, teacher_name = load_policy(args.teacher_model, dtype=args.dtype) if use_teacher \
        else (None, None, None)

    # 4. Answer, check or score, pair up: every finished batch is in the work file, so a rerun resumes ----------------
    run.set_stage(f"answering the prompts (rerun the same command to resume from {paths.work})")
    result = make_pairs(model, tokenizer, prompts, **settings, teacher_model=teacher,
                        teacher_tokenizer=teacher_tokenizer, model_name=model_name, teacher_name=teacher_name,
                        work_file=paths.work, progress=args.progress)

    # 5. Write the pairs atomically, read them back through the validators, save report and summary ------------------
    run.set_stage("writing the pairs")
    summary, report = save_pairs(result, paths.out, extra={"arguments": dataclasses.asdict(args)})
    print(summary_text(summary, report))
    return summary


if __name__ == "__main__":
    with run.recipe_errors():
        main(parse_pairs_args(DEFAULT_CONFIG))
