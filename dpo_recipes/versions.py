"""The versions dpo-recipes is tested with, and a start-up warning when the installed ones are outside them.

`TESTED` is the one place the window is written down: pyproject.toml's pins must admit it and the README's
"Supported versions" paragraph must state it (tests/test_versions.py checks both). CI runs the full suite on the
lowest versions the pins admit and the fast suite (`-m "not e2e and not distributed"`) on the newest ones
(.ci/run), both on torch 2.13.0 (CPU). A window's ends are the releases CI ran, so widen it only with a passing run.

pip keeps the pins, but an install with `--no-deps`, a later `pip install` of another package, or a conda
environment can leave other versions in place: `warn_outside_tested_window()` says so once per process.
"""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version

from packaging.version import InvalidVersion, Version

logger = logging.getLogger(__name__)

# package -> (lowest tested, highest tested). Torch: only 2.13.0 (CPU build) runs in CI; the pin stays wider
# (>=2.4) so a CUDA build installed first is kept, and the warning says it is untested.
# TRL 1.15.0 fails the fast suite; TRL moves its API between minors, so it is pinned to the one minor tested.
TESTED: dict[str, tuple[str, str]] = {
    "torch": ("2.13.0", "2.13.0"),
    "trl": ("1.16.0", "1.16.0"),
    "transformers": ("5.23.0", "5.25.0"),
    "peft": ("0.21.2", "0.21.2"),
    "accelerate": ("1.15.0", "1.16.0"),
    "datasets": ("5.2.0", "5.2.0"),
}

_warned = False


def window_text(package: str) -> str:
    """`5.23.0 to 5.25.0`, or `1.16.0` for a window of one release."""
    low, high = TESTED[package]
    return low if low == high else f"{low} to {high}"


def outside_tested_window(installed: dict[str, str] | None = None) -> list[str]:
    """One message per package whose installed version is outside `TESTED` (none for a package not installed).
    A local build label is ignored: torch 2.13.0+cpu and 2.13.0+cu128 are both 2.13.0. `installed`: package ->
    version, read from the environment when None."""
    messages = []
    for package, (low, high) in TESTED.items():
        try:
            found = installed[package] if installed is not None else version(package)
        except (KeyError, PackageNotFoundError):
            continue
        try:
            inside = Version(low) <= Version(Version(found).public) <= Version(high)
        except InvalidVersion:
            inside = False
        if not inside:
            messages.append(f"{package} {found} is installed, outside the versions dpo-recipes is tested with "
                            f"({window_text(package)}): results may differ.")
    return messages


def warn_outside_tested_window(installed: dict[str, str] | None = None) -> list[str]:
    """Log a warning line for each package outside the tested window, the first time it is called in a process;
    later calls say nothing. Returns the lines it logged."""
    global _warned
    if _warned:
        return []
    _warned = True
    messages = outside_tested_window(installed)
    for message in messages:
        logger.warning(message)
    return messages
