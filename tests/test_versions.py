"""The tested version window: one warning line per package outside it, once per process, none inside; the pins in
pyproject.toml admit the whole window and the README states it."""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from dpo_recipes import versions
from dpo_recipes.versions import TESTED, warn_outside_tested_window, window_text

ROOT = Path(__file__).resolve().parents[1]
INSIDE = {"torch": "2.13.0+cpu", "trl": "1.16.0", "transformers": "5.24.0", "peft": "0.21.2", "accelerate": "1.15.0",
          "datasets": "5.2.0"}


@pytest.fixture
def installed(monkeypatch):
    """Pretend these versions are installed (a package missing from the dict is not installed), in a fresh process."""
    found = dict(INSIDE)

    def version(package):
        if package not in found:
            raise PackageNotFoundError(package)
        return found[package]

    monkeypatch.setattr(versions, "version", version)
    monkeypatch.setattr(versions, "_warned", False)
    return found


def test_nothing_is_said_inside_the_window(installed, caplog):
    with caplog.at_level(logging.WARNING, logger="dpo_recipes.versions"):
        assert warn_outside_tested_window() == []
    assert caplog.records == []


def test_one_line_per_package_outside_the_window_once_per_process(installed, caplog):
    installed.update(transformers="5.26.0", trl="1.15.0", torch="2.11.0+cu128")  # as after `pip install --no-deps`
    del installed["datasets"]                                                    # not installed: nothing to say
    with caplog.at_level(logging.WARNING, logger="dpo_recipes.versions"):
        warn_outside_tested_window()
        warn_outside_tested_window()  # a second recipe start in the same process
    lines = [r.getMessage() for r in caplog.records]
    assert all(r.levelno == logging.WARNING for r in caplog.records)
    assert lines == [
        "torch 2.11.0+cu128 is installed, outside the versions dpo-recipes is tested with (2.13.0): "
        "results may differ.",
        "trl 1.15.0 is installed, outside the versions dpo-recipes is tested with (1.16.0): results may differ.",
        "transformers 5.26.0 is installed, outside the versions dpo-recipes is tested with (5.23.0 to 5.25.0): "
        "results may differ.",
    ]


def test_the_window_ends_are_inside_and_a_patch_past_them_is_not(installed):
    for package, (low, high) in TESTED.items():
        for inside in (low, high):
            assert versions.outside_tested_window({package: inside}) == [], (package, inside)
        outside = versions.outside_tested_window({package: high + ".1"})  # e.g. 5.25.0.1: newer, untested
        assert len(outside) == 1 and outside[0].startswith(f"{package} {high}.1 is installed")
    assert versions.outside_tested_window({"transformers": "not a version"}) != []


def test_parse_recipe_args_warns_at_start_up(installed, caplog, tmp_path):
    from dpo_recipes.config import parse_recipe_args

    installed["accelerate"] = "1.17.0"
    with caplog.at_level(logging.WARNING, logger="dpo_recipes.versions"):
        parse_recipe_args(None, ["--output_dir", str(tmp_path)])
        parse_recipe_args(None, ["--output_dir", str(tmp_path)])
    assert [r.getMessage().split(" is installed")[0] for r in caplog.records] == ["accelerate 1.17.0"]


def _pins() -> dict[str, Requirement]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {r.name.lower(): r for r in map(Requirement, project["dependencies"])}


def test_pyproject_pins_admit_the_whole_tested_window():
    pins = _pins()
    for package, (low, high) in TESTED.items():
        pin = pins[package].specifier
        assert pin.contains(low) and pin.contains(high), (package, str(pin))


def test_readme_states_the_tested_window():
    readme = (ROOT / "README.md").read_text().lower()
    for package in TESTED:
        assert f"{package} {window_text(package)}".lower() in readme, package
