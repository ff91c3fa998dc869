"""Training throughput and peak memory: plain TRL against the recipe, on the same model, data, steps and batch.

    python benchmarks/throughput.py --data hh_pairs.jsonl --max_length 256 --steps 6 --batch 8 [--model DIR]
                                    [--variants baseline,like,preset] [--warmup 1]

Variants, each in its own process (so that peak RSS is that variant's alone), one after the other:
1. `baseline`: plain TRL as its examples write it: DPOTrainer(model, ref_model=None, peft_config=LoraConfig(r=16,
   q/k/v/o)), TRL 1.16's DPOConfig defaults (bf16 off only because TRL's default refuses a CPU).
2. `like`: the recipe's trainer with the same LoRA targets, loss and learning rate, and the performance settings the
   recipe ships (`dpo_recipes.config.presets.performance_defaults`): what our levers alone change.
3. `preset`: `recipes/dpo_lora.py --dataset_name DATA` as a user runs it (its default preset for this hardware).

For each: pairs/s and tokens/s over the training loop (the reference's log-probs included: the time from the trainer's
construction, where a precomputation would run, to the end of `train()`), the loop without the first `--warmup` steps,
peak RSS, achieved GFLOP/s and its share of a matmul peak measured here in the same precision, and the first 3 losses.
GFLOP/s counts the matmuls the CPU executed (from the token positions each pass ran: padding and recomputation count,
prompts run once count once; see `executed_gflop`), so it measures how well the hardware is used, while pairs/s
measures speed. The last line is
`speedup_pairs_per_s=X rss_ratio=Y` for `like` against `baseline`. Without --data, synthetic pairs of real length
(prompts of a few hundred tokens) are written and used.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from transformers import TrainerCallback

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]
TRAINER_LEVERS = ("share_prompts", "reference_cache")  # RecipeDPOTrainer arguments --set may also give
WORDS = ("the model answer question because which however data training preference pair reward policy value should "
         "would could about between through during before after language response user assistant example explain "
         "reason result first second third finally important consider therefore").split()


def synthetic_pairs(path: Path, n: int = 64, seed: int = 0) -> Path:
    """Pairs shaped like HH-harmless: a multi-turn prompt of 100-400 words, answers of 20-120 words."""
    rng = random.Random(seed)

    def words(lo, hi):
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))).capitalize() + "."

    with open(path, "w") as f:
        for _ in range(n):
            turns = [{"role": r, "content": words(30, 130)} for r in ("user", "assistant", "user")]
            f.write(json.dumps({"prompt": turns, "chosen": [{"role": "assistant", "content": words(20, 120)}],
                                "rejected": [{"role": "assistant", "content": words(20, 120)}]}) + "\n")
    return path


def matmul_peak(dtype_name: str, size: int = 2048, repeats: int = 8) -> float:
    """GFLOP/s of a square matmul in this precision on this machine (the best of a few runs)."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e9


class CountingCollator:
    """Counts the token positions (padding included) of the batches TRL's collator builds: two rows per pair."""

    def __init__(self, collator):
        self.collator = collator
        self.positions = 0
        self.completions = 0

    def __call__(self, examples):
        batch = self.collator(examples)
        self.positions += batch["input_ids"].numel()
        self.completions += int(batch["completion_mask"].sum())
        return batch


def executed_gflop(trainer) -> float:
    """GFLOP of the matmuls the training steps ran, counted from the token positions each pass ran: per position
    2 x the decoder's weights (embeddings excluded) per pass, and 2 x hidden x vocabulary per completion position for
    the LM head. Passes: the reference forward (none for pairs the reference cache held), the policy forward, its
    backward (input gradients only: the base weights are frozen; LoRA's are negligible), and with gradient
    checkpointing a second forward. Attention scores are left out (under 5% here at 256 tokens)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    decoder = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n and "lora_" not in n
                  and "lm_head" not in n)
    config = model.config.get_text_config()
    head = 2 * config.hidden_size * config.vocab_size
    collator = trainer.data_collator
    before, after = getattr(trainer, "shared_prompt_tokens", lambda: (0, 0))()
    share = after / before if before else 1.0  # positions run per position of TRL's two-row layout
    cache = getattr(trainer, "reference_cache", None)
    reference = cache.misses / (cache.hits + cache.misses) if cache and cache.hits + cache.misses else 1.0
    passes = reference + 2 + (1 if trainer.args.gradient_checkpointing else 0)
    return (2 * decoder * collator.positions * share + head * collator.completions) * passes / 1e9


class _Clock(TrainerCallback):
    """Notes when each optimizer step ends."""

    def __init__(self):
        self.step_ends: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.step_ends.append(time.perf_counter())


def run_variant(variant: str, args) -> dict:
    """Train one variant in this process and return its figures."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from dpo_recipes.data import ValidationConfig, load_preference_data
    from dpo_recipes.models import load_tokenizer, resolve_model_path

    torch.manual_seed(0)
    model_path = resolve_model_path(args.model)
    tokenizer = load_tokenizer(model_path)
    data = load_preference_data(args.data, config=ValidationConfig(min_chosen_chars=1, min_rejected_chars=1,
                                                                   max_similarity=None), validation="off",
                                tokenizer=tokenizer, max_length=args.max_length, drop_prompt_too_long=True)
    dataset = data.dataset.select(range(min(len(data.dataset), args.steps * args.batch)))
    out = tempfile.mkdtemp(prefix=f"throughput-{variant}-")
    common = dict(output_dir=out, max_length=args.max_length, per_device_train_batch_size=args.batch,
                  gradient_accumulation_steps=1, max_steps=args.steps, logging_steps=1, save_strategy="no",
                  report_to=[], disable_tqdm=True, seed=0, bf16=False)
    clock = _Clock()
    if variant == "preset":
        return run_preset(args, clock)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=QKVO, task_type="CAUSAL_LM")
    start = time.perf_counter()
    if variant == "baseline":
        trainer = DPOTrainer(model=model, args=DPOConfig(**common), train_dataset=dataset, processing_class=tokenizer,
                             peft_config=lora)
    else:
        from dpo_recipes.config.presets import performance_defaults
        from dpo_recipes.train.trainer import RecipeDPOTrainer

        values = json.loads(args.set or "{}")
        trainer_kwargs = {k: values.pop(k) for k in TRAINER_LEVERS if k in values}
        config = DPOConfig(**{**common, **performance_defaults(), **values})
        trainer = RecipeDPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                                   peft_config=lora, **trainer_kwargs)
    trainer.add_callback(clock)
    trainer.data_collator = CountingCollator(trainer.data_collator)
    trainer.train()
    total = time.perf_counter() - start
    return figures(variant, trainer, clock, total, args)


def run_preset(args, clock) -> dict:
    """The recipe as a user runs it on their own data (its default preset), trainer captured for the figures."""
    import importlib.util

    from dpo_recipes.train import trainer as trainer_module
    from dpo_recipes.config import parse_recipe_args

    captured = {}
    original = trainer_module.RecipeDPOTrainer.train

    def timed_train(self, *a, **k):
        captured["trainer"] = self
        self.add_callback(clock)
        self.data_collator = CountingCollator(self.data_collator)
        return original(self, *a, **k)

    trainer_module.RecipeDPOTrainer.train = timed_train
    spec = importlib.util.spec_from_file_location("dpo_lora", ROOT / "recipes" / "dpo_lora.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    out = tempfile.mkdtemp(prefix="throughput-preset-")
    argv = ["--dataset_name", args.data, "--max_length", str(args.max_length), "--per_device_train_batch_size",
            str(args.batch), "--gradient_accumulation_steps", "1", "--max_steps", str(args.steps), "--output_dir", out,
            "--report_to", "none", "--save_strategy", "no", "--logging_steps", "1", "--disable_tqdm", "true",
            "--max_similarity", "none", "--min_chosen_chars", "1", "--min_rejected_chars", "1",
            "--max_train_samples", str(args.steps * args.batch), "--validation", "off",
            "--reference_cache", tempfile.mkdtemp(prefix="throughput-reference-")]  # cold: counts filling it
    if args.model:
        argv += ["--model_name_or_path", args.model]
    recipe.main(*parse_recipe_args(recipe.DEFAULT_CONFIG, argv))
    summary = json.loads((Path(out) / "summary.json").read_text())
    trainer = captured["trainer"]
    return figures("preset", trainer, clock, summary["train_seconds"], args)


def figures(variant: str, trainer, clock: _Clock, total: float, args) -> dict:
    import torch

    history = trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h][:3]
    tokens = max((h.get("num_tokens", 0) for h in history), default=0)
    pairs = trainer.state.global_step * args.batch
    warm = clock.step_ends[args.warmup - 1] if args.warmup and len(clock.step_ends) > args.warmup else None
    steady = (clock.step_ends[-1] - warm) if warm else None
    steady_pairs = (len(clock.step_ends) - args.warmup) * args.batch
    gflop = executed_gflop(trainer)
    precision = "bfloat16" if trainer.args.bf16 else "float32"
    return {"variant": variant, "pairs_per_s": pairs / total, "steady_pairs_per_s": steady_pairs / steady if steady
            else None, "tokens_per_s": tokens / total, "seconds": total,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2,
            "gflops": gflop / total, "precision": precision,
            "threads": torch.get_num_threads(), "losses": losses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="preference pairs (default: synthetic pairs of real length)")
    parser.add_argument("--model", default=None, help="model folder (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=1, help="steps left out of the steady-state rate")
    parser.add_argument("--variants", default="baseline,like,preset")
    parser.add_argument("--set", default=None, metavar="JSON",
                        help='DPOConfig values (or share_prompts, reference_cache) on top of the like variant\'s, to '
                        'study a lever: \'{"bf16": false}\'')
    parser.add_argument("--_run", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._run:
        print("RESULT " + json.dumps(run_variant(args._run, args)), flush=True)
        return
    if args.data is None:
        args.data = str(synthetic_pairs(Path(tempfile.mkdtemp()) / "pairs.jsonl"))
    results = {}
    for variant in args.variants.split(","):
        cmd = [sys.executable, __file__, "--_run", variant, "--data", args.data, "--max_length", str(args.max_length),
               "--steps", str(args.steps), "--batch", str(args.batch), "--warmup", str(args.warmup)]
        if args.model:
            cmd += ["--model", args.model]
        if args.set:
            cmd += ["--set", args.set]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "disabled"})
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{variant} failed:\n{proc.stderr[-3000:]}")
        results[variant] = json.loads(line[len("RESULT "):])
    peaks = {p: matmul_peak(p) for p in {r["precision"] for r in results.values()}}
    print(f"matmul peak here: " + ", ".join(f"{p} {g:.0f} GFLOP/s" for p, g in sorted(peaks.items())))
    print(f"{'variant':9} {'pairs/s':>8} {'steady':>8} {'tokens/s':>9} {'peak RSS':>9} {'GFLOP/s':>8} {'of peak':>8}  "
          f"{'precision':9} first losses")
    for name, r in results.items():
        steady = f"{r['steady_pairs_per_s']:8.3f}" if r["steady_pairs_per_s"] else f"{'-':>8}"
        print(f"{name:9} {r['pairs_per_s']:8.3f} {steady} {r['tokens_per_s']:9.1f} {r['peak_rss_gb']:7.2f}GB "
              f"{r['gflops']:8.1f} {100 * r['gflops'] / peaks[r['precision']]:7.1f}%  {r['precision']:9} "
              + " ".join(f"{x:.6f}" for x in r["losses"]))
    if "baseline" in results and "like" in results:
        base, like = results["baseline"], results["like"]
        print(f"speedup_pairs_per_s={like['pairs_per_s'] / base['pairs_per_s']:.2f} "
              f"rss_ratio={like['peak_rss_gb'] / base['peak_rss_gb']:.2f}")


if __name__ == "__main__":
    main()
