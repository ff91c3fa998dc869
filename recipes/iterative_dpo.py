#!/usr/bin/env python
"""Iterative DPO: rounds of sample -> score -> pair -> DPO, each round on the policy the last one trained.

    python recipes/iterative_dpo.py                                   # configs/iterative_dpo.yaml (format demo)
    python recipes/iterative_dpo.py --rounds 3 --k 8 --reference previous --output_dir outputs/iter-3

Each round k answers `prompts_file` with the current policy (best-of-n: k samples a prompt, scored by the rows'
checks or `--scorer`; or correction), pairs the best with the worst (`dpo_recipes.pairs`), and trains one DPO pass on
those pairs. Held-out prompts (`heldout_file`, never in training: refused if they overlap) are answered greedily and
checked before round 0 and after every round. General prompts (`general_prompts_file`, the 'general' rows of an
eval-prompts file) are answered too, and each round's answers are measured against the base answers: loops, answers
unchanged in substance, trained formats leaking into them, and the per-token KL (`dpo_recipes.pairs.intact`).
OUTPUT_DIR/round_k/ keeps the round's pairs (+ report, summary, work file), adapter, metrics, plots and both sets of
answers (heldout_answers.jsonl, general_answers.jsonl); OUTPUT_DIR/summary.json and heldout.png the held-out score
per round.

Killed, or to go further? Run the same command again (a larger --rounds to extend): it resumes after the last
finished round, with the same pairs and scores an uninterrupted run makes (`dpo_recipes.pairs.rounds`).

The LoRA reference (`--reference`):
- fixed: one adapter trains on through the rounds and the reference is always the base model (adapter disabled), so
  every round is regularized toward the same starting point. round_k/ holds the whole policy's adapter.
- previous: after each round the adapter is merged into the weights and the next round trains a new adapter on top,
  with the merged model (the previous policy) as the reference: each round may move further from the base. round_k/
  holds that round's adapter, which applies on top of the rounds before it, merged in order.

Where the values come from, each overriding the one before: the preset (dpo_recipes/config/presets.py),
configs/iterative_dpo.yaml beside this file (else the shipped one), then the command line; `dpo-recipes check` shows
each value's source.
"""

from dpo_recipes.progress import starting

starting(__name__, __file__)  # one line before ~5 s of imports

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import transformers
from trl import DPOConfig

from dpo_recipes import run
from dpo_recipes.config import RecipeArguments, RecipeModelConfig, parse_recipe_args
from dpo_recipes.config.presets import use_all_cpu_cores
from dpo_recipes.errors import DPORecipesError
from dpo_recipes.jsonio import write_file_atomic, write_json_atomic, write_jsonl_atomic
from dpo_recipes.models import lora_config
from dpo_recipes.pairs import build_scorer, build_verifier, heldout_score, load_prompts, make_pairs, save_pairs
from dpo_recipes.pairs import rounds as rounds_progress
from dpo_recipes.pairs.intact import GeneralWatch, form_checks
from dpo_recipes.shipped import default_config
from dpo_recipes.train.trainer import RecipeDPOTrainer
from dpo_recipes.watch.evaluation import load_eval_prompts
from dpo_recipes.watch.tracking import save_log_history

logger = logging.getLogger("iterative_dpo")
DEFAULT_CONFIG = default_config(__file__, "iterative_dpo.yaml")  # beside this file, else the shipped one


@dataclass
class IterativeArguments(RecipeArguments):
    """The rounds, the prompts and how pairs are made (dpo_recipes.pairs), next to the usual recipe arguments."""

    prompts_file: str = field(default="data/formats/train.jsonl", metadata={"help": "Prompts to make pairs from."})
    heldout_file: str = field(default="data/formats/heldout.jsonl", metadata={"help": "Held-out prompts, scored."})
    rounds: int = field(default=2, metadata={"help": "DPO rounds (each: sample, score, pair, train)."})
    pairs_mode: str = field(default="best-of-n", metadata={"help": "best-of-n or correction."})
    k: int = field(default=4, metadata={"help": "Samples a prompt in best-of-n."})
    verifier: str | None = field(default=None, metadata={"help": "Default check (None: each row's own check)."})
    scorer: str = field(default="verifier", metadata={"help": "verifier, a reward-model folder, or module:function."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=0.95, metadata={"help": "Sampling top-p."})
    min_margin: float = field(default=0.0, metadata={"help": "Skip pairs whose score gap is below this."})
    chosen_source: str = field(default="reference", metadata={"help": "correction: reference, rewrite or teacher."})
    rewrite_template: str | None = field(default=None, metadata={"help": "correction: e.g. 'The answer is {reference}.'"})
    answer_max_new_tokens: int = field(default=48, metadata={"help": "Tokens an answer may take (pairs, held-out)."})
    answer_batch_size: int = field(default=16, metadata={"help": "Prompts generated at once."})
    reference: str = field(default="fixed", metadata={"help": "fixed (the base) or previous (the last round's policy).",
                                                      "choices": ["fixed", "previous"]})
    general_prompts_file: str | None = field(
        default=None, metadata={"help": "Eval prompts (JSONL, 'prompt' and 'kind'); the 'general' ones are answered "
                                "before round 0 and after each round and checked for damage. None: not measured."})


def main(args: IterativeArguments, training_args: DPOConfig, model_args: RecipeModelConfig) -> dict:
    # 1. Logging, seed, checks before any model work --------------------------------------------------------------
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()
    transformers.set_seed(training_args.seed)
    use_all_cpu_cores(training_args.world_size)
    if not model_args.use_peft:
        raise DPORecipesError("recipes/iterative_dpo.py trains LoRA adapters round after round; set use_peft: true.")
    train_prompts, heldout = load_prompts(args.prompts_file), load_prompts(args.heldout_file)
    overlap = {json.dumps(r.prompt) for r in train_prompts} & {json.dumps(r.prompt) for r in heldout}
    if overlap:
        raise DPORecipesError(f"{args.heldout_file}: {len(overlap)} held-out prompt(s) are also in "
                              f"{args.prompts_file} (e.g. {sorted(overlap)[0][:80]}); held-out prompts must never train.")
    verifier = build_verifier(args.verifier)
    verifier.prepare(train_prompts + heldout)  # every row's check, now
    general = [p["prompt"] for p in load_eval_prompts(args.general_prompts_file) if p["kind"] == "general"]
    if args.general_prompts_file and not general:
        raise DPORecipesError(f"{args.general_prompts_file}: no prompt of kind 'general' to measure damage on.")
    out = Path(training_args.output_dir)
    settings = rounds_progress.run_settings(args, training_args, model_args, files={
        "prompts_file": args.prompts_file, "heldout_file": args.heldout_file,
        "general_prompts_file": args.general_prompts_file})
    progress = rounds_progress.start(out, settings, args.overwrite_output_dir)  # None: a new run

    scores, rounds = (progress["heldout_score_by_round"], progress["rounds"]) if progress else ([], [])
    stopped = progress["stopped"] if progress else None
    general_before = progress["general_before"] if progress else None
    todo = range(len(rounds), args.rounds) if stopped is None else range(0)  # a finished run only rewrites its summary

    # 2. The starting policy (the embedded SmolLM2 when --model_name_or_path is unset) and its held-out score -----
    watch = None
    if progress is None or todo:
        tokenizer, model_path = run.load_tokenizer_for(model_args, training_args)
        model = run.load_model_for(model_args, training_args, model_path)
        answers = dict(max_new_tokens=args.answer_max_new_tokens, batch_size=args.answer_batch_size)
        if general:  # the base answers, before any adapter (greedy: the same ones a resumed run started from)
            watch = GeneralWatch(model, tokenizer, general, form_checks(train_prompts),
                                 identity_name=args.identity_name,
                                 kl_to="base" if args.reference == "fixed" else "previous round",
                                 max_new_tokens=args.eval_max_new_tokens, batch_size=args.eval_batch_size,
                                 repetition_penalty=args.eval_repetition_penalty)
            general_before = watch.baseline()
            logger.info("round 0 general answers: %s", general_before)
        if progress is None:
            held = heldout_score(model, tokenizer, heldout, verifier, **answers)
            scores = [held.score]
            write_jsonl_atomic(out / "heldout_answers_before.jsonl", held.results)
            logger.info("round 0 held-out score: %.3f", scores[0])
        else:
            model = rounds_progress.restore_policy(model, out, len(rounds), args.reference)
            logger.info("resuming %s after %d finished round(s); held-out score by round so far: %s", out,
                        len(rounds), scores)

    for k in todo:
        # 3. Sample, score, pair with the current policy -----------------------------------------------------------
        round_dir = out / f"round_{k}"
        run.set_stage(f"round {k}: making pairs", output_dir=str(round_dir))
        result = make_pairs(model, tokenizer, train_prompts, mode=args.pairs_mode, verifier=verifier,
                            scorer=build_scorer(args.scorer, verifier=verifier), k=args.k,
                            temperature=args.temperature, top_p=args.top_p, seed=training_args.seed + k,
                            max_new_tokens=args.answer_max_new_tokens, batch_size=args.answer_batch_size,
                            chosen_source=args.chosen_source, rewrite_template=args.rewrite_template,
                            min_margin=args.min_margin, work_file=round_dir / "pairs.work.jsonl")
        if not result.rows:
            stopped = f"round {k} made no pair ({result.why_empty()})"
            logger.warning("%s: stopping after %d round(s)", stopped, k)
            rounds_progress.save(out, settings, scores, rounds, general_before, stopped)
            break
        pairs_file = round_dir / "pairs.jsonl"
        save_pairs(result, pairs_file)

        # 4. One DPO pass on the round's pairs (validated as any training data) ------------------------------------
        args.dataset_name = str(pairs_file)
        data = run.load_train_data(args, training_args, tokenizer)
        round_args = dataclasses.replace(training_args, output_dir=str(round_dir), save_strategy="no")
        if args.reference == "previous" and hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()  # the last policy becomes the weights and the reference
        fresh = k == 0 or args.reference == "previous"
        start = time.perf_counter()
        trainer = RecipeDPOTrainer(model=model, args=round_args, train_dataset=data.dataset, processing_class=tokenizer,
                                   peft_config=lora_config(model_args, model) if fresh else None,
                                   share_prompts=args.share_prompts, reference_cache=args.reference_cache,
                                   anchor_coef=args.anchor_coef)
        metrics = trainer.train().metrics
        trainer.save_model(str(round_dir))
        save_log_history(trainer.state.log_history, round_dir)
        run.draw_plots(round_dir)
        model = trainer.model

        # 5. The held-out score of the new policy, and its general answers against the base ones ----------------
        held = heldout_score(model, tokenizer, heldout, verifier, **answers)
        scores.append(held.score)
        write_jsonl_atomic(round_dir / "heldout_answers.jsonl", held.results)
        logger.info("round %d: %d pairs, held-out score %.3f -> %.3f", k, len(data.dataset), scores[-2], scores[-1])
        rounds.append({"round": k, "pairs": len(data.dataset), "pair_counts": result.counts,
                       "train_loss": metrics.get("train_loss"), "train_seconds": round(time.perf_counter() - start, 1),
                       "heldout_score_after": scores[-1]})
        if watch is not None:
            rounds[-1]["general"], rows = watch.measure(model)
            write_jsonl_atomic(round_dir / "general_answers.jsonl", rows)
            logger.info("round %d general answers: %s", k, rounds[-1]["general"])
        rounds_progress.save(out, settings, scores, rounds, general_before)  # a rerun resumes after this round

    # 6. Summary and the held-out score per round -----------------------------------------------------------------
    summary = {"reference": args.reference, "pairs_mode": args.pairs_mode, "k": args.k,
               "heldout_prompts": len(heldout), "heldout_score_by_round": scores,
               "gain_points": round(100 * (scores[-1] - scores[0]), 1), "rounds": rounds,
               "general_before": general_before, "stopped": stopped}
    write_json_atomic(out / "summary.json", summary)
    plot_scores(scores, out / "heldout.png")
    print(f"held-out score by round: {' -> '.join(f'{s:.2f}' for s in scores)}; outputs in {out}")
    if general_before is not None and rounds:
        last = rounds[-1]["general"]
        kl = "n/a" if last["kl_per_token"] is None else f"{last['kl_per_token']:.3f} nats/token"
        print(f"general answers after the last round ({general_before['prompts']} prompts): "
              f"{last['unchanged_rate']:.2f} unchanged in substance, loops {last['degenerate_before']} -> "
              f"{last['degenerate_after']}, {last['format_leaks_total']} with a trained format leaked in, KL to the "
              f"{last['kl_to']} {kl}")
    return summary


def plot_scores(scores: list[float], path: Path) -> None:
    """The held-out score after each round (round 0: before training) as a small PNG."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5, 3.2))
    ax = fig.subplots()
    ax.plot(range(len(scores)), [100 * s for s in scores], marker="o")
    ax.set(xlabel="round (0: before training)", ylabel="held-out prompts passing (%)", ylim=(0, 100))
    ax.set_xticks(range(len(scores)))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    write_file_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))  # never a half-written PNG


def parse(argv: list[str] | None = None):
    return parse_recipe_args(DEFAULT_CONFIG, argv, (IterativeArguments, DPOConfig, RecipeModelConfig),
                             recipe="iterative_dpo")


if __name__ == "__main__":
    with run.recipe_errors():
        main(*parse())
