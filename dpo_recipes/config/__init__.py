"""A recipe's settings: its own arguments next to TRL's, the named presets, and how they are parsed."""

from dpo_recipes.config.arguments import RecipeArguments, RecipeModelConfig, parse_recipe_args

__all__ = ["RecipeArguments", "RecipeModelConfig", "parse_recipe_args"]
