"""What a run leaves loads anywhere: adapter_config.json names the base model by an absolute path (a local model given
as a relative path), so PEFT loads the adapter from another working directory, and the model card names the real base
model, the data and the recipe."""

from __future__ import annotations

import os
import shutil

from test_own_run import FIXTURE, dpo, quick


def test_an_adapter_trained_from_a_relative_model_path_loads_from_another_folder(tiny_model_dir, tmp_path,
                                                                                 monkeypatch, one_torch_thread):
    from peft import AutoPeftModelForCausalLM

    project = tmp_path / "project"
    shutil.copytree(tiny_model_dir, project / "models" / "tiny")
    monkeypatch.chdir(project)
    dpo(*quick("models/tiny", project / "out", "--dataset_name", str(FIXTURE), "--max_steps", "1"))
    card = (project / "out" / "README.md").read_text()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    model = AutoPeftModelForCausalLM.from_pretrained(str(project / "out"))
    assert model.peft_config["default"].base_model_name_or_path == str((project / "models" / "tiny").resolve())
    assert f"Base model: {(project / 'models' / 'tiny').resolve()}" in card
    assert f"Data: {FIXTURE}" in card and "recipes/dpo_lora.py" in card and "None" not in card
    assert f'AutoPeftModelForCausalLM.from_pretrained("{(project / "out").resolve()}")' in card
    assert os.path.isabs(model.peft_config["default"].base_model_name_or_path)
