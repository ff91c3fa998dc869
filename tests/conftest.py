"""Shared fixtures: a tiny random Llama saved as a model folder, with and without a chat template."""

from __future__ import annotations

import pytest


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
