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


def _flag(name: str) -> bool:
    """An accelerate launch flag from the environment, read as accelerate reads it."""
    from accelerate.utils import parse_flag_from_env

    return parse_flag_from_env(name)


def deepspeed_requested() -> bool:
    return _flag("ACCELERATE_USE_DEEPSPEED")


def fsdp_requested() -> bool:
    return _flag("ACCELERATE_USE_FSDP")


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
    if _flag("ACCELERATE_USE_CPU") and (deepspeed_requested() or fsdp_requested()):
        raise DPORecipesError(
            "ACCELERATE_USE_CPU=true makes accelerate drop DeepSpeed/FSDP (the run would be plain DDP). Unset it and "
            f"launch as on a GPU machine: {LAUNCH_FIX}.")
    if _flag("ACCELERATE_USE_CPU") and "WORLD_SIZE" not in os.environ:
        logger.warning(
            "accelerate launch with --cpu or use_cpu: true starts ONE process and no DeepSpeed or FSDP, whatever "
            "--num_processes and the config say. Drop it to run the config as written: %s.", LAUNCH_FIX)
    if fsdp_requested():
        raise DPORecipesError(
            "FSDP through accelerate is GPU-only: accelerate enables it only for GPU-type devices, so on this CPU the "
            "run would silently be DDP. Use accelerate_configs/zero3.yaml (DeepSpeed ZeRO-3 shards parameters on "
            "CPUs too).")


def distributed_setup(trainer) -> dict:
    """The distributed setup in effect, read from accelerate's state and the engine that trained (not from the
    launch YAML): DeepSpeed's ZeRO stage and offload come from the DeepSpeed engine itself."""
    state = trainer.accelerator.state
    args = trainer.args
    setup = {
        "distributed_type": getattr(state.distributed_type, "value", str(state.distributed_type)),
        "world_size": state.num_processes,
        "mixed_precision": str(state.mixed_precision),
        "global_batch": args.per_device_train_batch_size * args.gradient_accumulation_steps * state.num_processes,
    }
    engine = getattr(trainer, "model_wrapped", None)
    if hasattr(engine, "zero_optimization_stage"):  # a DeepSpeed engine
        setup["zero_stage"] = engine.zero_optimization_stage()
        for part, config in (("offload_optimizer", engine.zero_offload_optimizer()),
                             ("offload_param", engine.zero_offload_param())):
            device = getattr(config, "device", None)
            setup[part] = getattr(device, "value", device) or "none"
    return setup


def check_in_effect(trainer) -> None:
    """Refuse a run whose distributed setup is not what the launch asked for (after the trainer is built)."""
    setup = distributed_setup(trainer)
    if deepspeed_requested() and setup["distributed_type"] != "DEEPSPEED":
        raise DPORecipesError(f"The launch asked for DeepSpeed but accelerate set up {setup['distributed_type']}: "
                              "DeepSpeed was dropped. Remove --cpu / use_cpu / ACCELERATE_USE_CPU from the launch "
                              f"({LAUNCH_FIX}).")
    asked = int(os.environ.get("WORLD_SIZE", "1"))
    if asked != setup["world_size"]:
        raise DPORecipesError(f"The launch started {asked} processes but accelerate sees a world of "
                              f"{setup['world_size']}: each process would train alone on all the data. Remove --cpu / "
                              f"use_cpu from the launch ({LAUNCH_FIX}).")
