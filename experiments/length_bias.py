"""Does R-DPO stop DPO from learning "longer is better"? DPO vs R-DPO on pairs whose chosen answer is longer.

We train the embedded SmolLM2-135M-Instruct with LoRA for the same steps, data order and seed under DPO and under
R-DPO, and report the mean number of tokens it generates (greedy, capped at --max_new_tokens) on 16 held-out prompts
before and after. Three data designs (see `make_pairs`): "length" (the same tip with and without ~56 tokens of
elaboration; the long one always wins), "length-mixed" (the long one wins 2 of 3 pairs) and "quality" (a helpful
tip beats "I don't know"; the elaboration sits on the winner in 2 of 3 pairs).

    DPO_RECIPES_CACHE=/work/cache OMP_NUM_THREADS=1 python experiments/length_bias.py            # ~8 min on one core
    python experiments/length_bias.py --design length-mixed --lr 2e-4 --rdpo_alpha 0.02 --output_dir runs/lb

Results (20 steps of 2 pairs, beta 0.1, LoRA r=16 all-linear; before training: 31.8 tokens):

    design        lr     alpha  cap   DPO after      R-DPO after
    length        5e-5   0.05   128   64.6 (+32.8)   65.1 (+33.3)     <- the defaults
    length        2e-4   0.02    96   96.0 (cap)     93.7
    length-mixed  5e-5   0.02   128   31.4           33.0
    length-mixed  2e-4   0.02   128   31.8           30.1
    quality       5e-5   0.02   128   31.4           32.4
    quality       2e-4   0.02   128   30.4           30.4

At this scale R-DPO did not grow length less. Why, as far as these runs show: R-DPO's margin alpha * (|y_w| - |y_l|)
re-weights pairs *relative to each other* (pairs won by the longer answer get a smaller gradient weight sigma(-z)).
When every pair has the same gap ("length"), it scales every gradient by about the same factor, and Adam's
normalization undoes a uniform scale, so R-DPO trains like DPO. When the gap varies in sign ("length-mixed",
"quality"), 20 steps of DPO did not learn verbosity at all, so there was nothing for R-DPO to remove. Showing the
effect the paper reports (Park et al.: DPO on HH / TL;DR, thousands of steps) needs a longer run on real data.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig
from trl import DPOConfig

from dpo_recipes.models import load_model, load_tokenizer, resolve_model_path
from dpo_recipes.trainer import RecipeDPOTrainer

TEMPLATES = ["In one short sentence, how can I get better at {s}?", "Briefly, what is one tip for {s}?"]
TRAIN_SKILLS = ["cooking", "drawing", "chess", "swimming", "running", "writing", "singing", "painting", "typing",
                "reading", "gardening", "baking", "cycling", "coding", "dancing", "photography", "public speaking",
                "yoga", "climbing", "sewing"]
EVAL_SKILLS = ["juggling", "knitting", "skating", "surfing", "pottery", "archery", "sketching", "rowing"]
ELABORATION = (" Set a small goal for each session so you can see your progress from week to week. Ask someone with "
               "more experience to watch you and give honest feedback, and write down what you learn. Over a few "
               "months these small steps add up, and {s} will start to feel natural.")


def make_pairs(design: str = "length") -> Dataset:
    """Pairs whose chosen answer is the longer one in 2 of 3 pairs (all of them for design "length").

    length-mixed: the same short tip with and without elaboration; the long version wins 2 of 3 pairs.
    quality:      a helpful tip beats "I don't know"; the elaboration sits on the winner in 2 of 3 pairs.
    length:       the long version always wins (every pair has the same +56-token gap).
    """
    rows = []
    for i, (template, skill) in enumerate((t, s) for t in TEMPLATES for s in TRAIN_SKILLS):
        good, bad = f"Practice {skill} for a few minutes every day.", f"I don't know anything about {skill}."
        padding = ELABORATION.format(s=skill)
        short_wins = i % 3 == 2 and design != "length"
        if design == "quality":
            chosen, rejected = (good, bad + padding) if short_wins else (good + padding, bad)
        else:
            chosen, rejected = (good, good + padding) if short_wins else (good + padding, good)
        rows.append({"prompt": [{"role": "user", "content": template.format(s=skill)}],
                     "chosen": [{"role": "assistant", "content": chosen}],
                     "rejected": [{"role": "assistant", "content": rejected}]})
    return Dataset.from_list(rows)


def mean_generated_tokens(model, tokenizer, prompts: list[str], max_new_tokens: int) -> float:
    """Mean tokens generated greedily before the end-of-turn token (capped at max_new_tokens)."""
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in prompts]
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    model.eval()
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None,
                             top_k=None, pad_token_id=tokenizer.pad_token_id)
    lengths = []
    for row in out[:, enc["input_ids"].shape[1]:].tolist():
        lengths.append(row.index(tokenizer.eos_token_id) if tokenizer.eos_token_id in row else len(row))
    return sum(lengths) / len(lengths)


def train(path: str, tokenizer, pairs: Dataset, loss_hook: str | None, args) -> tuple[object, dict]:
    config = DPOConfig(output_dir=str(Path(args.output_dir) / (loss_hook or "dpo")), max_steps=args.steps,
                       per_device_train_batch_size=args.batch_size, learning_rate=args.lr, beta=args.beta, lr_scheduler_type="constant",
                       precompute_ref_log_probs=True, logging_steps=5, report_to="none", save_strategy="no",
                       gradient_checkpointing=False, seed=args.seed, disable_tqdm=True, use_cpu=True)
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = RecipeDPOTrainer(model=load_model(path), args=config, train_dataset=pairs, processing_class=tokenizer,
                               peft_config=lora, loss_hook=loss_hook, rdpo_alpha=args.rdpo_alpha)
    trainer.train()
    logs = {k: v for h in trainer.state.log_history for k, v in h.items()}
    return trainer.model, logs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_name_or_path", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=2, help="pairs per step")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--rdpo_alpha", type=float, default=0.05)
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--design", default="length", choices=["length-mixed", "quality", "length"],
                        help="how chosen and rejected differ (see make_pairs)")
    parser.add_argument("--output_dir", default="runs/length_bias")
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")

    path = resolve_model_path(args.model_name_or_path)
    tokenizer = load_tokenizer(path)
    pairs = make_pairs(args.design)
    lengths = [len(tokenizer(p["chosen"][0]["content"])["input_ids"]) - len(tokenizer(p["rejected"][0]["content"])
               ["input_ids"]) for p in pairs]
    eval_prompts = [t.format(s=s) for t in TEMPLATES for s in EVAL_SKILLS]
    print(f"{len(pairs)} pairs; chosen is longer in {sum(d > 0 for d in lengths)} of them, by "
          f"{sum(lengths) / len(lengths):.1f} tokens on average; {len(eval_prompts)} held-out prompts")

    started = time.time()
    results = {"before": mean_generated_tokens(load_model(path), tokenizer, eval_prompts, args.max_new_tokens)}
    print(f"before: {results['before']:.1f} tokens ({time.time() - started:.0f} s)", flush=True)
    for name, hook in (("dpo", None), ("rdpo", "rdpo")):
        model, logs = train(path, tokenizer, pairs, hook, args)
        results[name] = mean_generated_tokens(model, tokenizer, eval_prompts, args.max_new_tokens)
        results[f"{name}_train_logs"] = {k: round(v, 4) for k, v in logs.items() if isinstance(v, float)}
        print(f"{name}: {results[name]:.1f} tokens ({time.time() - started:.0f} s)", flush=True)
    results |= {"design": args.design, "chosen_longer_share": sum(d > 0 for d in lengths) / len(lengths),
                "mean_length_gap_tokens": sum(lengths) / len(lengths), "steps": args.steps, "batch_size": args.batch_size, "rdpo_alpha": args.rdpo_alpha, "beta": args.beta, "lr": args.lr,
                "max_new_tokens": args.max_new_tokens, "seconds": round(time.time() - started)}

    print(f"\nmean generated tokens on {len(eval_prompts)} held-out prompts (greedy, cap {args.max_new_tokens}):")
    print(f"  before training      {results['before']:6.1f}")
    print(f"  DPO   after {args.steps:3d} steps {results['dpo']:6.1f}  ({results['dpo'] - results['before']:+.1f})")
    print(f"  R-DPO after {args.steps:3d} steps {results['rdpo']:6.1f}  ({results['rdpo'] - results['before']:+.1f})"
          f"   alpha={args.rdpo_alpha}")
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.output_dir) / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
