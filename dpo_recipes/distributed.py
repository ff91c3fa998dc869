"""What `accelerate launch` asked for against what is in effect: the traps that turn a 2-process DeepSpeed run into
something else without a word, refused or named in one line.

On a machine without a GPU, a recipe launched exactly as on a GPU machine (`accelerate launch --config_file
accelerate_configs/zero2.yaml --num_processes 2 recipes/dpo_lora.py`) trains with DeepSpeed over 2 CPU processes
(gloo): the recipe sets `use_cpu` in its training arguments itself (`presets.hardware_defaults`). What breaks it:
- `--cpu` or `use_cpu: true` in the launch: accelerate's `launch_command` then skips the DeepSpeed launcher and
  starts one process;
- `ACCELERATE_USE_CPU=true` in the environment: DeepSpeed is dropped and the run is plain DDP (`MULTI_CPU`);
- FSDP through accelerate on a CPU: accelerate enables FSDP only for GPU-type devices, so the run silently
  becomes DDP.
"""

from __future__ import annotations

import logging
import os

from dpo_recipes.errors import DPORecipesError

logger = logging.getLogger(__name__)

LAUNCH_FIX = "the recipe sets use_cpu in its training arguments itself on a machine without a GPU"


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def deepspeed_requested() -> bool:
    return _truthy("ACCELERATE_USE_DEEPSPEED")


def fsdp_requested() -> bool:
    return _truthy("ACCELERATE_USE_FSDP")


def launch_precision() -> str | None:
    """The mixed precision a DeepSpeed launch config fixes ('bf16', 'fp16' or 'no'), else None.

    DeepSpeed refuses a run whose config and training arguments disagree ("ds bf16.enabled=True vs hf bf16=False"),
    so under DeepSpeed the launch config's precision is the run's; elsewhere the hardware picks it."""
    precision = os.environ.get("ACCELERATE_MIXED_PRECISION")
    return precision if deepspeed_requested() and precision in ("bf16", "fp16", "no") else None


def check_launch_environment() -> None:
    """Refuse, before anything loads, the launch settings that would silently change the distributed setup."""
    import torch

    if torch.cuda.is_available():
        return
    if _truthy("ACCELERATE_USE_CPU") and (deepspeed_requested() or fsdp_requested()):
        raise DPORecipesError(
            "ACCELERATE_USE_CPU=true makes accelerate drop DeepSpeed/FSDP (the run would be plain DDP). Unset it and "
            f"launch as on a GPU machine: {LAUNCH_FIX}.")
    if _truthy("ACCELERATE_USE_CPU") and "WORLD_SIZE" not in os.environ:
        logger.warning(
            "accelerate launch with --cpu or use_cpu: true starts ONE process and no DeepSpeed or FSDP, whatever "
            "--num_processes and the config say. Drop it to run the config as written: %s.", LAUNCH_FIX)
    if fsdp_requested():
        raise DPORecipesError(
            "FSDP through accelerate is GPU-only: accelerate enables it only for GPU-type devices, so on this CPU the "
            "run would silently be DDP. Use accelerate_configs/zero3.yaml (DeepSpeed ZeRO-3 shards parameters on "
            "CPUs too).")


def check_in_effect(trainer) -> None:
    """Refuse a run whose distributed setup is not what the launch asked for (after the trainer is built)."""
    state = trainer.accelerator.state
    kind = getattr(state.distributed_type, "value", str(state.distributed_type))
    if deepspeed_requested() and kind != "DEEPSPEED":
        raise DPORecipesError(f"The launch asked for DeepSpeed but accelerate set up {kind}: DeepSpeed was dropped. "
                              f"Remove --cpu / use_cpu / ACCELERATE_USE_CPU from the launch ({LAUNCH_FIX}).")
    asked = int(os.environ.get("WORLD_SIZE", "1"))
    if asked != state.num_processes:
        raise DPORecipesError(f"The launch started {asked} processes but accelerate sees a world of "
                              f"{state.num_processes}: each process would train alone on all the data. Remove --cpu / "
                              f"use_cpu from the launch ({LAUNCH_FIX}).")
