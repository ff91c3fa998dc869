"""Old import paths, kept for one release: `dpo_recipes.trainer` and the other modules that moved into the stage
folders still import, with a FutureWarning naming the new path. Removed in the release after 0.2."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {
    "trainer": "train.trainer", "losses": "train.losses", "shared_prompt": "train.shared_prompt",
    "reference_cache": "train.reference_cache", "distributed": "train.distributed",
    "monitor": "watch.monitor", "tracking": "watch.tracking", "plots": "watch.plots", "evaluation": "watch.evaluation",
    "preflight": "check.preflight", "preflight_rules": "check.rules", "preflight_estimate": "check.estimate",
    "presets": "config.presets", "loss_presets": "config.loss_presets",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports `dpo_recipes.OLD` as the module at its new path (the same module object), with a FutureWarning."""

    def find_spec(self, fullname, path=None, target=None):
        package, _, name = fullname.partition(".")
        if package == "dpo_recipes" and name in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        new = f"dpo_recipes.{MOVED[spec.name.partition('.')[2]]}"
        warnings.warn(f"{spec.name} moved to {new}; the old path stops working after dpo-recipes 0.2.", FutureWarning,
                      stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module):
        pass  # the new module is already executed


def install() -> None:
    if not any(isinstance(finder, _Alias) for finder in sys.meta_path):
        sys.meta_path.append(_Alias())
