"""Does R-DPO stop DPO from learning "longer is better"? DPO vs R-DPO on pairs whose chosen answer is usually longer.

We train the embedded SmolLM2-135M-Instruct with LoRA for the same steps, data order and seed under DPO and under
R-DPO (one run per --rdpo_alpha), and measure on held-out prompts (skills never trained on):

- generated length: mean tokens generated greedily before the end of turn (capped at --max_new_tokens), the tokens
  it adds after the helpful tip when that tip is forced as the start of its answer ("after tip"), and the
  share of answers that reuse a phrase of the trained elaboration;
- learned length preference: beta * h of "tip + elaboration" over "tip alone", where h is the policy-minus-reference
  log-ratio difference (DPO's implicit reward margin). Positive: the run now prefers the padded answer;
- learned quality preference ("quality" design): beta * h of the helpful tip over "I don't know".

The data (see `make_pairs`): in a share --long_wins of the pairs the longer answer (the same ~56-token elaboration)
wins, in the rest the shorter one wins; "length" pairs differ only in the elaboration, "quality" pairs also in
content (the helpful tip always wins). Why not --long_wins 1.0: if every pair says "longer wins" by the same gap,
R-DPO adds the same constant to every pair's logit; that rescales every gradient by about the same factor, and Adam
undoes a uniform scale, so R-DPO trains like DPO (measured: 64.6 vs 65.1 tokens). R-DPO re-weights pairs *against
each other*: pairs the length gap already explains get a small weight, pairs won by the shorter answer a large one.
For "length" pairs the fixed points are explicit: DPO settles at beta * h = log(p / (1 - p)) for a share p of long
wins, R-DPO at log(p / (1 - p)) - alpha * gap.

    DPO_RECIPES_CACHE=/work/cache python experiments/length_bias.py                       # defaults: see --help
    python experiments/length_bias.py --design length --rdpo_alpha 0.01 0.05 --output_dir runs/lb

Results are in docs/losses.md ("Length-bias experiment").
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig
from trl import DPOConfig

from dpo_recipes.jsonio import write_json_atomic
from dpo_recipes.models import load_model, load_tokenizer, resolve_model_path
from dpo_recipes.train.trainer import RecipeDPOTrainer

TEMPLATES = ["In one short sentence, how can I get better at {s}?", "Briefly, what is one tip for {s}?",
             "Give me a quick tip for {s}."]
TRAIN_SKILLS = ["cooking", "drawing", "chess", "swimming", "running", "writing", "singing", "painting", "typing",
                "reading", "gardening", "baking", "cycling", "coding", "dancing", "photography", "public speaking",
                "yoga", "climbing", "sewing"]
EVAL_SKILLS = ["juggling", "knitting", "skating", "surfing", "pottery", "archery", "sketching", "rowing"]
GOOD, BAD = "Practice {s} for a few minutes every day.", "I don't know anything about {s}."
ELABORATION = (" Set a small goal for each session so you can see your progress from week to week. Ask someone with "
               "more experience to watch you and give honest feedback, and write down what you learn. Over a few "
               "months these small steps add up, and {s} will start to feel natural.")


def _pair(prompt: str, chosen: str, rejected: str) -> dict:
    return {"prompt": [{"role": "user", "content": prompt}], "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}


def make_pairs(design: str, long_wins: float) -> Dataset:
    """One pair per (training skill, template); the longer answer wins in round(long_wins * n) of them.

    length:  the same helpful tip with and without the elaboration.
    quality: the helpful tip beats "I don't know"; the elaboration sits on the winner when the longer answer wins
             and on the loser otherwise, so the helpful answer always wins.
    The short wins are spread evenly over the cells in skill-major order, so for long_wins >= 2/3 no skill is a
    short win under more than one template: neither the skill nor the template alone predicts which answer wins.
    """
    cells = [(t, s) for s in TRAIN_SKILLS for t in TEMPLATES]
    n_long = round(long_wins * len(cells))
    rows = []
    for i, (template, skill) in enumerate(cells):
        longer_wins = (i * n_long) // len(cells) != ((i + 1) * n_long) // len(cells)  # evenly spread, exact count
        good, bad, padding = GOOD.format(s=skill), BAD.format(s=skill), ELABORATION.format(s=skill)
        if design == "length":
            chosen, rejected = (good + padding, good) if longer_wins else (good, good + padding)
        else:
            chosen, rejected = (good + padding, bad) if longer_wins else (good, bad + padding)
        rows.append(_pair(template.format(s=skill), chosen, rejected))
    return Dataset.from_list(rows)


def eval_prompts() -> list[tuple[str, str]]:
    return [(t.format(s=s), s) for t in TEMPLATES for s in EVAL_SKILLS]


ELABORATION_MARKERS = ("small goal", "honest feedback", "week to week", "feel natural")


def chat_head(tokenizer, prompt: str) -> str:
    """The chat-formatted user turn, up to where the assistant's answer starts."""
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)


@torch.no_grad()
def greedy_continuations(model, tokenizer, texts: list[str], max_new_tokens: int) -> list[list[int]]:
    """Greedy continuation tokens of each text, cut before the end-of-turn token (or at max_new_tokens)."""
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    model.eval()
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None,
                         top_k=None, pad_token_id=tokenizer.pad_token_id)
    rows = out[:, enc["input_ids"].shape[1]:].tolist()
    return [row[:row.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in row else row for row in rows]


def generate(model, tokenizer, prompts: list[str], max_new_tokens: int) -> dict:
    """Greedy answers: mean tokens before the end-of-turn token (capped at max_new_tokens), the share of answers
    that reuse a phrase of the trained elaboration, and the answers themselves."""
    rows = greedy_continuations(model, tokenizer, [chat_head(tokenizer, p) for p in prompts], max_new_tokens)
    answers = [tokenizer.decode(row, skip_special_tokens=True) for row in rows]
    padded = sum(any(m in a.lower() for m in ELABORATION_MARKERS) for a in answers)
    return {"tokens": sum(map(len, rows)) / len(rows), "elaboration_share": padded / len(answers),
            "after_tip_tokens": continuation_tokens(model, tokenizer, max_new_tokens), "answers": answers}


def continuation_tokens(model, tokenizer, max_new_tokens: int) -> float:
    """Mean tokens the model adds greedily after the helpful tip, forced as the start of its answer, on the held-out
    prompts: 0 if it ends the turn right after the tip. This is the decision the pairs train (stop after the tip, or
    elaborate), measured on skills never trained on, free of how the model would have phrased its own tip."""
    texts = [chat_head(tokenizer, prompt) + GOOD.format(s=skill) for prompt, skill in eval_prompts()]
    rows = greedy_continuations(model, tokenizer, texts, max_new_tokens)
    return sum(map(len, rows)) / len(rows)


@torch.no_grad()
def completion_logps(model, tokenizer, prompt: str, completion: str) -> float:
    """Summed log-prob of the assistant turn `completion` (with its end-of-turn tokens) after the chat prompt."""
    head = chat_head(tokenizer, prompt)
    full = tokenizer.apply_chat_template([{"role": "user", "content": prompt},
                                          {"role": "assistant", "content": completion}], tokenize=False)
    n_head = len(tokenizer(head, add_special_tokens=False)["input_ids"])
    ids = torch.tensor([tokenizer(full, add_special_tokens=False)["input_ids"]])
    logps = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
    targets = ids[0, 1:]
    return logps[n_head - 1:].gather(1, targets[n_head - 1:, None]).sum().item()


def implicit_margin(model, tokenizer, prompt: str, winner: str, loser: str, beta: float) -> float:
    """beta * h for (winner, loser): the policy's log-ratio gain on winner minus on loser, against the reference
    (the same model with its LoRA adapter disabled)."""
    policy = completion_logps(model, tokenizer, prompt, winner) - completion_logps(model, tokenizer, prompt, loser)
    with model.disable_adapter():
        ref = completion_logps(model, tokenizer, prompt, winner) - completion_logps(model, tokenizer, prompt, loser)
    return beta * (policy - ref)


def learned_preferences(model, tokenizer, beta: float) -> dict:
    model.eval()
    length, quality = [], []
    for prompt, skill in eval_prompts():
        good, bad, padding = GOOD.format(s=skill), BAD.format(s=skill), ELABORATION.format(s=skill)
        length.append(implicit_margin(model, tokenizer, prompt, good + padding, good, beta))
        quality.append(implicit_margin(model, tokenizer, prompt, good, bad, beta))
    return {"length_pref": sum(length) / len(length), "quality_pref": sum(quality) / len(quality)}


def train(path: str, tokenizer, pairs: Dataset, rdpo_alpha: float | None, args) -> tuple[object, dict]:
    name = "dpo" if rdpo_alpha is None else f"rdpo-{rdpo_alpha:g}"
    config = DPOConfig(output_dir=str(Path(args.output_dir) / name), max_steps=args.steps,
                       per_device_train_batch_size=args.batch_size, learning_rate=args.lr, beta=args.beta,
                       lr_scheduler_type="constant", precompute_ref_log_probs=True, logging_steps=10,
                       report_to="none", save_strategy="no", gradient_checkpointing=False, seed=args.seed,
                       disable_tqdm=True, use_cpu=True)
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = RecipeDPOTrainer(model=load_model(path), args=config, train_dataset=pairs, processing_class=tokenizer,
                               peft_config=lora, loss_hook=None if rdpo_alpha is None else "rdpo",
                               rdpo_alpha=rdpo_alpha or 0.0)
    trainer.train()
    return trainer.model, trainer.state.log_history


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_name_or_path", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    parser.add_argument("--design", default="length", choices=["length", "quality"],
                        help="how chosen and rejected differ (see make_pairs)")
    parser.add_argument("--long_wins", type=float, default=0.8, help="share of pairs won by the longer answer")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch_size", type=int, default=4, help="pairs per step")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--rdpo_alpha", type=float, nargs="+", default=[0.05],
                        help="one R-DPO run per value (the SimPO paper's grid: 0.05 0.1 0.5 1.0)")
    parser.add_argument("--skip_dpo", action="store_true", help="only the R-DPO runs (e.g. extending an alpha sweep)")
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", default="runs/length_bias")
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")

    path = resolve_model_path(args.model_name_or_path)
    tokenizer = load_tokenizer(path)
    pairs = make_pairs(args.design, args.long_wins)
    gaps = [len(tokenizer(p["chosen"][0]["content"])["input_ids"]) - len(tokenizer(p["rejected"][0]["content"])
            ["input_ids"]) for p in pairs]
    share = sum(g > 0 for g in gaps) / len(gaps)
    mean_abs_gap = sum(abs(g) for g in gaps) / len(gaps)
    prompts = [p for p, _ in eval_prompts()]
    print(f"{len(pairs)} {args.design} pairs; the longer answer wins {share:.0%} of them; mean |gap| "
          f"{mean_abs_gap:.1f} tokens; {len(prompts)} held-out prompts", flush=True)

    started = time.time()
    results = {"settings": vars(args) | {"pairs": len(pairs), "longer_wins_share": share,
                                         "mean_abs_gap_tokens": mean_abs_gap},
               "before": generate(load_model(path), tokenizer, prompts, args.max_new_tokens)}
    print(f"before: {results['before']['tokens']:.1f} tokens ({time.time() - started:.0f} s)", flush=True)
    for alpha in ([] if args.skip_dpo else [None]) + args.rdpo_alpha:
        name = "dpo" if alpha is None else f"rdpo-{alpha:g}"
        model, history = train(path, tokenizer, pairs, alpha, args)
        run = {**generate(model, tokenizer, prompts, args.max_new_tokens),
               **learned_preferences(model, tokenizer, args.beta),
               "train_loss": [round(h["loss"], 4) for h in history if "loss" in h]}
        if args.design == "length" and 0 < share < 1:  # no finite optimum when one answer always wins
            run["fixed_point_length_pref"] = math.log(share / (1 - share)) - (alpha or 0.0) * mean_abs_gap
        results[name] = run
        print(f"{name}: {run['tokens']:.1f} tokens, {run['after_tip_tokens']:.1f} after the tip, elaboration in {run['elaboration_share']:.0%}, length pref {run['length_pref']:+.2f}, quality pref "
              f"{run['quality_pref']:+.2f} ({time.time() - started:.0f} s)", flush=True)
    results["seconds"] = round(time.time() - started)

    print(f"\nheld-out prompts: {len(prompts)}; {args.steps} steps of {args.batch_size} pairs, beta {args.beta}, "
          f"lr {args.lr}, greedy cap {args.max_new_tokens} tokens")
    print(f"{'run':12s} {'tokens':>7s} {'after tip':>10s} {'elaborated':>11s} {'length pref':>12s} {'quality pref':>13s}")
    for name, run in results.items():
        if name == "before" or name.startswith(("dpo", "rdpo")):
            print(f"{name:12s} {run['tokens']:7.1f} {run['after_tip_tokens']:10.1f} {run['elaboration_share']:11.0%} "
                  f"{run.get('length_pref', 0):+12.2f} {run.get('quality_pref', 0):+13.2f}")
    write_json_atomic(Path(args.output_dir) / "results.json", results)


if __name__ == "__main__":
    main()
