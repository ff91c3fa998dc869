"""The compact fused LM head on CPUs: TRL 1.16 scores only the completion positions there too, as it does on CUDA."""

from __future__ import annotations

import contextlib

import torch

from dpo_recipes.train.internals import warn_once


def score_completion_tokens_only() -> None:
    """Make TRL 1.16's fused LM head score only the completion positions on a CPU too, as it does on CUDA.

    TRL projects every position to the vocabulary on devices without Triton (to keep tile shapes fixed for compilers
    such as Neuron's), then zeroes the prompt positions: on a CPU that is pure waste, about 56M multiply-adds per
    prompt token in each forward and backward for a 49k vocabulary. The log-probs of the completion positions are
    computed by the same code either way (tested equal, and checked on each run's first batch: `lever_check`), so this
    changes speed and memory, never a result. Without TRL's private `_use_triton` (`internals`) it stays off.
    """
    import trl.trainer.utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if original is None:
        warn_once("_use_triton", "trl.trainer.utils._use_triton is gone from this TRL version: the fused LM head "
                  "scores every position on a CPU (slower, same results).")
        return
    if getattr(original, "_dpo_recipes", False):
        return

    def compact(device: torch.device) -> bool:
        return original(device) or device.type == "cpu"

    compact._dpo_recipes = True
    compact.original = original
    trl_utils._use_triton = compact


@contextlib.contextmanager
def full_lm_head():
    """TRL's own fused LM head during the block (the compact one undone), for the levers' self-check."""
    import trl.trainer.utils as trl_utils

    current = getattr(trl_utils, "_use_triton", None)
    original = getattr(current, "original", None)
    if original is None:
        yield
        return
    trl_utils._use_triton = original
    try:
        yield
    finally:
        trl_utils._use_triton = current


def drop_compact_lm_head() -> None:
    import trl.trainer.utils as trl_utils

    original = getattr(getattr(trl_utils, "_use_triton", None), "original", None)
    if original is not None:
        trl_utils._use_triton = original
