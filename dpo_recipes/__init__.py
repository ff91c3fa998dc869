"""dpo-recipes: curated DPO recipes over Hugging Face TRL.

The package is laid out by the stages a run goes through (docs/architecture.md): `config/` (a recipe's settings and
presets), `data/` (preference pairs: read, validate, audit), `models.py` (the policy and tokenizer), `train/` (TRL's
DPOTrainer plus the hooks, levers and guards), `watch/` (health alarms, held-out answers, W&B, plots), `check/` (the
pre-flight), `pairs/` (making pairs), `run/` (the path every recipe shares), and `cli.py` (the `dpo-recipes` command).
"""

from dpo_recipes import _moved
from dpo_recipes.errors import DPORecipesError

__version__ = "0.1.0"
__all__ = ["DPORecipesError", "__version__"]
_moved.install()  # old module paths (dpo_recipes.trainer, ...) still import for one release, with a FutureWarning
