"""dpo-recipes: curated DPO recipes over Hugging Face TRL."""

from dpo_recipes.errors import DPORecipesError

__version__ = "0.1.0"
__all__ = ["DPORecipesError", "__version__"]
