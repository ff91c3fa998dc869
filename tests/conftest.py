"""Shared test helpers: recipes as modules, and a tiny random Llama folder with and without a chat template."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def reference_cache_in_a_temporary_folder(tmp_path_factory):
    """Runs in tests (and the recipes they start as subprocesses) keep reference log-probs in a folder of their own,
    not in the user's cache, where one test session's pairs would turn the next session's misses into hits."""
    import os

    os.environ["DPO_RECIPES_REFERENCE_CACHE"] = str(tmp_path_factory.mktemp("reference-logps"))


@pytest.fixture
def one_torch_thread():
    """Tiny models gain nothing from a second thread, and on a machine shared with other jobs two threads that wait
    for each other made these tests several times slower; the setting is restored after each test."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def load_recipe(name: str):
    """Import recipes/NAME.py as a module (recipes are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A 2-layer random Llama with the character-level ChatML tokenizer of test_trainer, as a safetensors folder."""
    from test_trainer import tiny_model, tiny_tokenizer

    path = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = tiny_tokenizer()
    tiny_model(tokenizer).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_base_model_dir(tmp_path_factory) -> str:
    """The same tiny model with a tokenizer that has no chat template, as a base model's."""
    from test_trainer import tiny_model, tiny_tokenizer

    path = tmp_path_factory.mktemp("tiny-llama-base")
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = None
    tiny_model(tokenizer).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return str(path)
