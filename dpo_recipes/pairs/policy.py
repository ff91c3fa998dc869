"""Load the student (or teacher): a model folder, a hub id, the embedded default (None), or a LoRA adapter folder.

An adapter folder (adapter_config.json and no config.json, as `recipes/dpo_lora.py` saves) is loaded on top of
the base model its adapter_config.json names (`base` overrides it): an iterative run's "current policy = base +
adapter" without merging. Its tokenizer comes from the adapter folder when it holds one, else from the base.
"""

from __future__ import annotations

import json
from pathlib import Path

from dpo_recipes.errors import DPORecipesError
from dpo_recipes.models import load_model, load_tokenizer, missing_in_folder, resolve_model_path


def is_adapter_folder(path: str | Path) -> bool:
    folder = Path(path).expanduser()
    return (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file()


def load_policy(name_or_path: str | None, *, dtype: str = "float32", base: str | None = None):
    """(model, tokenizer, name): `name` says what was loaded ('BASE + adapter ADAPTER' for an adapter folder)."""
    path = resolve_model_path(name_or_path)
    if not is_adapter_folder(path):
        return load_model(path, dtype=dtype), load_tokenizer(path), path
    from peft import PeftModel

    try:
        config = json.loads((Path(path) / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DPORecipesError(f"{path}/adapter_config.json: cannot read it ({exc}).") from None
    if not (base or config.get("base_model_name_or_path")):
        raise DPORecipesError(f"{path}: the adapter's config names no base model; pass the base folder as well.")
    base_path = resolve_model_path(base or config["base_model_name_or_path"])
    model = PeftModel.from_pretrained(load_model(base_path, dtype=dtype), path)
    tokenizer = load_tokenizer(path if missing_in_folder(Path(path), "tokenizer") is None else base_path)
    return model, tokenizer, f"{base_path} + adapter {path}"
