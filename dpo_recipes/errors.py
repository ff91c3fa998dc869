"""The one exception type the package raises for problems a user can fix."""

import contextlib
import sys


class DPORecipesError(Exception):
    """A problem with the user's input or environment, with a message that says what to do.

    Recipes and the CLI print the message without a traceback and exit with status 2.
    """


@contextlib.contextmanager
def exit_on_user_error():
    """Print a `DPORecipesError` as one line on stderr and exit with status 2 (no traceback)."""
    try:
        yield
    except DPORecipesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
