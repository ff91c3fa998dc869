"""`lora_top_fraction`: LoRA on the top share of the decoder layers, counted for the model at hand."""

import re

import pytest
import torch
from peft import PeftModel, get_peft_model
from test_trainer import config, pairs, tiny_tokenizer
from transformers import LlamaConfig, LlamaForCausalLM

from dpo_recipes.config import RecipeModelConfig, parse_recipe_args
from dpo_recipes.errors import DPORecipesError
from dpo_recipes.models import lora_config
from dpo_recipes.train.trainer import RecipeDPOTrainer

PROJECTIONS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def llama(layers: int, vocab: int = 64) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32,
                                        num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1))


def adapted(peft_model) -> dict[int, set[str]]:
    """Layer index -> the projections that carry a LoRA A matrix there."""
    found: dict[int, set[str]] = {}
    for name, _ in peft_model.named_parameters():
        match = re.search(r"layers\.(\d+)\.\w+\.(\w+)\.lora_A", name)
        if match:
            found.setdefault(int(match.group(1)), set()).add(match.group(2))
    return found


def model_args(**values) -> RecipeModelConfig:
    return RecipeModelConfig(**{"use_peft": True, "lora_r": 4, "lora_alpha": 8,
                                "lora_target_modules": ["all-linear"], **values})


@pytest.mark.parametrize(("layers", "fraction", "expected"), [
    (30, 0.5, range(15, 30)),    # SmolLM2-135M's depth: the default run's layers 15-29
    (24, 0.5, range(12, 24)),    # another model's depth: the same setting, its own upper half
    (3, 0.34, range(2, 3)),      # round(1.02) = 1 layer
    (4, 0.01, range(3, 4)),      # never none: at least the top layer
    (30, 1.0, range(0, 30)),     # every layer: TRL's get_peft_config as is
])
def test_the_top_share_of_layers_gets_every_linear_projection(layers, fraction, expected):
    peft_model = get_peft_model(llama(layers), lora_config(model_args(lora_top_fraction=fraction), llama(layers)))
    found = adapted(peft_model)
    assert sorted(found) == list(expected)
    assert all(names == PROJECTIONS for names in found.values())
    assert not any("lm_head" in name and "lora" in name for name, _ in peft_model.named_parameters())


def test_named_targets_keep_their_names_on_the_top_layers():
    args = model_args(lora_target_modules=["q_proj", "v_proj"], lora_top_fraction=0.5)
    found = adapted(get_peft_model(llama(6), lora_config(args, llama(6))))
    assert found == {3: {"q_proj", "v_proj"}, 4: {"q_proj", "v_proj"}, 5: {"q_proj", "v_proj"}}


def test_a_saved_top_layer_adapter_loads_back_onto_the_same_layers(tmp_path):
    peft_model = get_peft_model(llama(6), lora_config(model_args(lora_top_fraction=0.5), llama(6)))
    peft_model.save_pretrained(tmp_path)
    assert sorted(adapted(PeftModel.from_pretrained(llama(6), tmp_path))) == [3, 4, 5]


def test_a_regex_target_with_a_layer_share_is_refused_naming_both():
    args = model_args(lora_target_modules=[r".*layers\.1\.self_attn\.q_proj"], lora_top_fraction=0.5)
    with pytest.raises(DPORecipesError, match="lora_top_fraction.*lora_target_modules"):
        lora_config(args, llama(4))


@pytest.mark.parametrize("value", ["0", "1.5", "-0.5"])
def test_a_share_outside_zero_to_one_is_refused_at_parse(tmp_path, value):
    with pytest.raises(DPORecipesError, match=f"--lora_top_fraction {value}"):
        parse_recipe_args(None, ["--output_dir", str(tmp_path), "--lora_top_fraction", value])


def test_below_the_adapted_layers_nothing_needs_a_gradient(tmp_path, one_torch_thread):
    """The speed the setting is for: the trainer's forward builds no graph under the first adapted layer, so the
    backward pass stops there; with every layer adapted it reaches the bottom one."""
    tok = tiny_tokenizer()

    def lower_output_needs_grad(fraction: float) -> bool:
        model = llama(4, vocab=len(tok))
        trainer = RecipeDPOTrainer(model=model, args=config(tmp_path, max_steps=1), processing_class=tok,
                                   train_dataset=pairs(),
                                   peft_config=lora_config(model_args(lora_top_fraction=fraction), model))
        seen = []
        layer = trainer.model.get_base_model().model.layers[1]
        handle = layer.register_forward_hook(lambda module, args, output: seen.append(
            (output[0] if isinstance(output, tuple) else output).requires_grad))
        trainer.train()
        handle.remove()
        assert seen  # the policy's forward and the adapter-disabled reference's (no grad either way)
        return any(seen)

    assert lower_output_needs_grad(0.5) is False  # layers 2-3 adapted: layer 1's output is a constant
    assert lower_output_needs_grad(1.0) is True
