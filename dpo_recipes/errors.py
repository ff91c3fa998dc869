"""The one exception type the package raises for problems a user can fix."""


class DPORecipesError(Exception):
    """A problem with the user's input or environment, with a message that says what to do.

    Recipes (`dpo_recipes.run.recipe_errors`) and the CLI print the message without a traceback and exit with
    status 2.
    """
