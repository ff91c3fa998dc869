"""How many optimizer steps a run makes, counted as transformers' Trainer counts them."""

from __future__ import annotations

import math


def planned_steps(training_args, rows: int) -> int:
    """The optimizer steps the run will make: max_steps, or as Trainer counts them for num_train_epochs."""
    if training_args.max_steps > 0:
        return training_args.max_steps
    batches = math.ceil(rows / (training_args.per_device_train_batch_size * training_args.world_size))
    accumulation = training_args.gradient_accumulation_steps
    per_epoch = max(batches // accumulation + int(batches % accumulation > 0), 1)
    return math.ceil(training_args.num_train_epochs * per_epoch)
