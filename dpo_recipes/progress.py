"""Progress bars for the long phases outside TRL's own (reading, validating, tokenizing, answering, plotting).

Through tqdm, like transformers' and datasets' bars: `TQDM_DISABLE=1` turns them off, as do a recipe's
`--disable_tqdm true` (the recipe calls `set_enabled`) and `dpo-recipes ... --quiet`-style callers."""

from __future__ import annotations

import os
import sys

_ENABLED = [True]


def set_enabled(enabled: bool) -> None:
    """Show (True) or hide the project's bars, and datasets' (recipes pass `not training_args.disable_tqdm`)."""
    _ENABLED[0] = bool(enabled)
    try:
        import datasets

        (datasets.enable_progress_bars if enabled else datasets.disable_progress_bars)()
    except ImportError:  # pragma: no cover - datasets is a dependency
        pass


def enabled() -> bool:
    return _ENABLED[0] and os.environ.get("TQDM_DISABLE", "").lower() not in ("1", "true", "yes")


def bar(total: int | None, desc: str, unit: str = "pairs", **kwargs):
    """A tqdm bar on stderr, shown only when `enabled()`; use as a context manager and call `.update(n)`."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled(), file=sys.stderr, dynamic_ncols=True,
                mininterval=0.5, **kwargs)


def starting(module_name: str, recipe_file: str) -> None:
    """One line on stderr as a recipe starts, before its ~5 s of importing PyTorch, Transformers and TRL, so that the
    first seconds of a run are not silent. Only when the recipe runs as a script (`module_name` is "__main__"), on
    the first process of a launch, without --help, and unless TQDM_DISABLE is set."""
    if module_name != "__main__" or os.environ.get("RANK", "0") != "0" or not enabled():
        return
    if any(arg in ("-h", "--help") for arg in sys.argv[1:]):
        return
    name = os.path.splitext(os.path.basename(recipe_file))[0]
    print(f"{name}: starting (importing PyTorch, Transformers and TRL)", file=sys.stderr, flush=True)
