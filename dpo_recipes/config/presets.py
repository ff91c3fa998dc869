"""Named presets: DPOConfig / ModelConfig / recipe values as data, with the reason for each value.

A recipe resolves its preset into parser defaults, so the order of precedence is
hardware defaults < preset < YAML (`--config`) < command line. Presets never set precision: that comes from
`hardware_defaults()`, so no preset fails on a machine without bf16 ("Your setup doesn't support bf16/gpu").
"""

from __future__ import annotations

import functools
from pathlib import Path

from dpo_recipes.config.loss_presets import LOSS_PRESETS, VARIANT_PRESETS, variant_defaults
from dpo_recipes.errors import DPORecipesError
from dpo_recipes.train.distributed import launch_precision

# LoRA settings shared by the LoRA presets (ModelConfig fields).
_LORA = {
    "use_peft": True,
    "lora_r": 16,                      # enough capacity for a behaviour change; r=8 learned the identity slower
    "lora_alpha": 32,                  # alpha = 2r: the usual scale, update magnitude independent of r
    "lora_dropout": 0.0,               # dropout adds noise to a short run and buys nothing on 100s of pairs
    "lora_target_modules": ["all-linear"],  # attention and MLP: identity lives in more than q/v
}

PRESETS: dict[str, dict] = {
    # The default run: teach SmolLM2-135M-Instruct a new identity on a 2-core CPU in minutes. Chosen by the
    # sweep in experiments/identity_sweep.md; each value's reason cites what the sweep showed.
    "identity-lora-cpu": {
        **_LORA,
        # Measured on held-out prompts (32 identity, 24 general) with data/identity, 30 steps of 8 pairs:
        #   lr 2e-4, beta 0.1: name in 19% of identity answers (the model learned "I'm <some name>." only);
        #   lr 3.5e-4, beta 0.25: 91%;  lr 5e-4, beta 0.1: 100%, but more general answers drifted.
        "loss_type": ["sigmoid", "sft"],  # DPO alone reached reward accuracy 1.0 without moving greedy answers
        "loss_weights": [1.0, 1.0],      # (the seed's 0/8); the SFT term on chosen makes the new name greedy
        "beta": 0.25,                    # a larger share of DPO's name contrast in the update than 0.1 (91% vs 19%)
        "learning_rate": 3.5e-4,         # 2e-4 was too little in 30 steps; 5e-4 changed more general answers
        "max_steps": 30,
        "per_device_train_batch_size": 8,
        "gradient_accumulation_steps": 1,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 2,
        "max_length": 256,               # prompt + completion tokens; the default data is < 200
        # The reference (base with the adapter disabled) runs per step. Precomputing it costs a forward over all 376
        # pairs (~130 s on 2 cores), more than the per-step reference forwards for the 240 pairs the run trains.
        # Turn it on for multi-epoch runs (it then saves a forward per pair per extra epoch).
        "precompute_ref_log_probs": False,
        "activation_checkpointing": False,  # 135M fits easily; checkpointing would cost ~20-30% speed for nothing
        "logging_steps": 5,
        "save_strategy": "steps",
        "save_steps": 10,                # a checkpoint to resume from every 10 steps
        "save_total_limit": 1,
        "seed": 0,
        "report_to": ["wandb"],          # offline when no W&B key (see dpo_recipes.watch.tracking)
    },
    # LoRA DPO on a GPU for a 0.5-8B instruct model and a real preference set (UltraFeedback-like).
    "lora-gpu": {
        **_LORA,
        "loss_type": ["sigmoid"],
        "beta": 0.1,                     # DPO paper / Zephyr; 0.1-0.5 is the working range
        "learning_rate": 5e-6,           # LoRA needs ~10x the full-parameter lr (TRL's LoRA example uses 5e-6)
        "num_train_epochs": 1,           # 1-3 epochs; DPO overfits fast, start with 1
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 8,  # effective batch 32 per device, as in the handbook's recipes
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.1,             # 10% of the steps: a ratio when < 1 (transformers 5 has no warmup_ratio)
        "max_length": 1024,              # 512-1024 covers most chat preference data; audit with `dpo-recipes validate`
        "activation_checkpointing": True,  # memory, not speed, is what limits batch size on a GPU
        "logging_steps": 10,
        "save_strategy": "steps",
        "save_steps": 200,
        "report_to": ["wandb"],
    },
    # Full-parameter DPO (DeepSpeed ZeRO-3 or FSDP on several GPUs), the Zephyr / alignment-handbook recipe.
    "full-gpu": {
        "use_peft": False,
        "loss_type": ["sigmoid"],
        "beta": 0.1,                     # Zephyr-7B-beta's value
        "learning_rate": 5e-7,           # full-parameter range 1e-7 to 5e-6; the handbook's zephyr recipe uses 5e-7
        "num_train_epochs": 1,
        "per_device_train_batch_size": 8,
        "gradient_accumulation_steps": 2,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.1,             # 10% of the steps (a ratio when < 1)
        "max_length": 1024,
        "activation_checkpointing": True,
        "logging_steps": 10,
        "save_strategy": "steps",
        "save_steps": 100,
        "save_total_limit": 1,
        "report_to": ["wandb"],
    },
    **LOSS_PRESETS,
}
# LoRA DPO of your own data on a CPU: lora-gpu's DPO, without the GPU's memory trade-off.
PRESETS["lora-cpu"] = {
    **PRESETS["lora-gpu"],
    # A CPU run is limited by compute, not memory: recomputing costs 5% of the pairs/s (0.642 against 0.611 on HH
    # pairs in benchmarks/throughput.py) to halve peak memory (2.6 against 5.1 GB), which a 135M-1B model does not need.
    "activation_checkpointing": False,
}
# Batches of pairs of similar length pad less: +4-12% pairs/s on HH pairs (prompts of 120-230 tokens), more on data
# whose lengths vary more. Batches stay random (megabatches of 50 batches are drawn at random, then sorted). Not in the
# identity preset, whose measured result depends on its batch order.
for _name in ("lora-cpu", "lora-gpu", "full-gpu"):
    PRESETS[_name]["train_sampling_strategy"] = "group_by_length"

# The preset of the default (identity) run; its YAML names it. A run that names no preset gets `default_preset()`.
DEFAULT_PRESET = "identity-lora-cpu"
# Presets that set only training values (the rest are DPO loss variants, for the DPO recipe only).
TRAINING_PRESETS = ("identity-lora-cpu", "lora-cpu", "lora-gpu", "full-gpu")
# Keys that define the DPO loss: a recipe with another trainer (ORPO, SimPO, KTO) takes its loss from
# `loss_presets.VARIANT_PRESETS` instead, so a training preset's values for these do not apply to it.
DPO_LOSS_KEYS = ("loss_type", "loss_weights", "beta", "label_smoothing", "precompute_ref_log_probs", "loss_hook",
                 "odpo_alpha", "odpo_ratio", "rdpo_alpha")


# Settings only the DPO recipe's trainer implements: `group_by_length` needs pair lengths (RecipeDPOTrainer), which
# transformers cannot infer from the ORPO/SimPO/KTO trainers' tokenized columns.
DPO_TRAINER_KEYS = ("train_sampling_strategy",)


def default_preset() -> str:
    """The preset of a run that names none: LoRA DPO for this machine's hardware."""
    import torch

    return "lora-gpu" if torch.cuda.is_available() else "lora-cpu"


def performance_defaults() -> dict:
    """Plain TRL's LoRA setup made fast and lean on this hardware: what benchmarks/throughput.py's `like` variant adds
    to TRL's defaults (the recipe's trainer also scores only completion positions in the LM head, an exact change).

    Precision from `hardware_defaults()`, and gradient checkpointing kept on: with the compact LM head and shared
    prompts it costs 5% of the pairs/s on a CPU and halves peak memory (2.63 against 5.12 GB on 64 HH pairs at
    max_length 256). The CPU LoRA presets turn it off for speed, since a 135M-1B model fits either way. Length
    grouping is left out here: it changes which pairs share a batch, so the losses would no longer match plain TRL's.
    """
    return {**hardware_defaults(), "activation_checkpointing": True}


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX): 2.5x fp32's matmul rate measured here."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def hardware_defaults() -> dict:
    """Precision for the machine at hand: bf16 where the GPU supports it, fp16 on older GPUs; on a CPU bf16 autocast
    where it multiplies bf16 in hardware (AVX512-BF16, AMX), else fp32."""
    import torch

    gpu = torch.cuda.is_available()
    # use_cpu: transformers refuses --bf16 without a GPU unless it is set (on a machine without a GPU it changes
    # nothing else)
    device = {} if gpu else {"use_cpu": True}
    fixed = launch_precision()  # a DeepSpeed launch config fixes precision; DeepSpeed refuses a mismatch
    if fixed is not None:
        return {"bf16": fixed == "bf16", "fp16": fixed == "fp16", **device}
    if gpu:
        bf16 = torch.cuda.is_bf16_supported()
        return {"bf16": bf16, "fp16": not bf16}
    # bf16 autocast (weights and optimizer stay fp32) where the CPU multiplies bf16 in hardware: 1.64x the pairs/s of
    # fp32 on an AVX512-BF16 CPU in benchmarks/throughput.py.
    return {"bf16": cpu_has_fast_bf16(), "fp16": False, **device}


def use_all_cpu_cores(world_size: int) -> None:
    """On a CPU-only single-process run, let torch use every core.

    `accelerate launch` sets OMP_NUM_THREADS=1 for the processes it starts (right for several processes per machine);
    a single CPU process then trains on one core, about 2x slower on 2 cores.
    """
    import os

    import torch

    if world_size == 1 and not torch.cuda.is_available():
        torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())


def preset_defaults(names: str | None = None, variant: str | None = None) -> dict:
    """Hardware defaults overlaid with the presets in `names` ('a,b': b's values win), default: `default_preset()`.

    `variant` ('orpo', 'simpo', 'kto'): values for that recipe's trainer. Training presets apply without their DPO
    loss keys, the variant's loss settings (`loss_presets.VARIANT_PRESETS`) go on top, and DPO loss presets are refused.
    """
    # TRL's own default (gradient checkpointing on), under transformers 5's name: the old one warns on every run.
    values = {"activation_checkpointing": True, **hardware_defaults()}
    for name in (names or default_preset()).split(","):
        name = name.strip()
        if name not in PRESETS:
            raise DPORecipesError(f"Unknown preset {name!r}. Known presets: {', '.join(sorted(PRESETS))}.")
        preset = PRESETS[name]
        if variant is not None:
            if name not in TRAINING_PRESETS:
                raise DPORecipesError(
                    f"Preset {name!r} sets a DPO loss; recipes/{variant}.py trains {variant.upper()}, whose loss "
                    f"settings come from its config. Use a training preset: {', '.join(TRAINING_PRESETS)}.")
            preset = {k: v for k, v in preset.items() if k not in DPO_LOSS_KEYS + DPO_TRAINER_KEYS}
        if "loss_type" in preset and "loss_weights" not in preset:
            values.pop("loss_weights", None)  # weights belong to the loss list they were written for
        values.update(preset)
    if variant is not None:
        if variant not in VARIANT_PRESETS:
            raise DPORecipesError(f"Unknown variant {variant!r}; known: {', '.join(VARIANT_PRESETS)}.")
        values.update(variant_defaults(variant))
    return values
