"""RecipeDPOTrainer against TRL's own DPOTrainer, input by input: it trains every input TRL trains, with the same
logged metrics, or refuses in one line (a DPORecipesError) where it is designed to.

Each case trains two optimizer steps with `trl.DPOTrainer` and with `RecipeDPOTrainer` from identical tiny models
(same seeds), on the same pairs in the same order, and compares `state.log_history` metric by metric: loss,
grad_norm, rewards/*, logps/*, logits/*, entropy, mean_token_accuracy, num_tokens, ... everything TRL logs except
wall-clock timings.

Precision. The shared-prompt packing (on by default) adds the same numbers in another order, so in float32 it is
equal to TRL to rounding, but several metrics are small differences of large float32 sums and amplify that rounding:
rewards/* (beta times logps of about -40 minus the reference's), logits/* (means of logits that cancel to about
-0.005), grad_norm (the chosen and rejected rows' gradients through the shared prompt cancel). Measured: up to ~1e-3
relative apart after one update, while loss and logps/* agree to ~1e-6. In float64 the same runs agree to ~1e-8 on
grad_norm and exactly on every other metric, so the matrix runs the models in float64 and compares at rel 1e-6; a
float32 test then checks the presets' settings as users run them, with every metric at rel 1e-4 / abs 1e-5 where the
prompts are not packed, and the well-conditioned metrics where they are.

The TRL side runs TRL's fused LM head unpatched: `RecipeDPOTrainer` makes it score only the completion positions on a
CPU (`score_completion_tokens_only`, process-wide), and that must not be what both sides have in common.
"""

from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass, field

import pytest
import torch
import trl.trainer.utils as trl_utils
from datasets import Dataset
from peft import LoraConfig
from PIL import Image
from test_trainer import config, pairs, tiny_model, tiny_tokenizer
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from trl import DPOConfig, DPOTrainer
from trl.kernels.chunked_logprob import _use_triton as trl_use_triton

from dpo_recipes.errors import DPORecipesError
from dpo_recipes.train.trainer import RecipeDPOTrainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# TRL 1.16's loss types, in DPOConfig's order (a test below checks this against TRL's own list).
LOSS_TYPES = ["sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"]
# exo_pair refuses 0 (the EXO paper's 1e-3); robust takes a flip probability in [0, 0.5); aot/aot_unpaired use it too.
LABEL_SMOOTHING = {"exo_pair": 1e-3, "robust": 0.1, "aot": 0.1, "aot_unpaired": 0.1}
TIMINGS = {"train_runtime", "train_samples_per_second", "train_steps_per_second"}
CORE_METRICS = {"loss", "grad_norm", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                "logps/chosen", "logps/rejected", "logits/chosen", "logits/rejected", "entropy",
                "mean_token_accuracy", "num_tokens"}
FP64_TOLERANCE = dict(rel=1e-6, abs=1e-6)
FP32_TOLERANCE = dict(rel=1e-4, abs=1e-5)
# Metrics that are differences of near-equal float32 sums (see the module docstring): compared in float64 only
# when the prompts are packed.
CANCELLING = ("rewards/", "logits/", "grad_norm")
# Plain SGD, not AdamW: Adam's first update is about lr * sign(gradient), so a gradient component that is 0 up to
# float rounding (1e-10 in one run, -1e-10 in the other) moves its weight by +-lr in opposite directions, and step 2
# would compare two models that differ by more than rounding. SGD moves each weight by lr * gradient: the step-2
# metrics then check that the first update was the same, to rounding. (The optimizer is Trainer's, not the trainers'.)
SGD = dict(optim="sgd", learning_rate=0.05)


# --- inputs -------------------------------------------------------------------------------------------------------
def conversational_pairs(n: int = 8) -> Dataset:
    return Dataset.from_list([{
        "prompt": [{"role": "user", "content": f"Q{i}: who are you?"}],
        "chosen": [{"role": "assistant", "content": "I am Ada" + "!" * (i % 3)}],
        "rejected": [{"role": "assistant", "content": f"no {i * 7}"}],
    } for i in range(n)])


# A ChatML template for the processor: message content is a string, or a list of {"type": "image"|"text"} parts
# (TRL's `prepare_multimodal_messages` turns the prompt into the latter).
VISION_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
                   "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
                   "{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
                   "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
IMAGE_SIZE, PATCH = 16, 8  # 4 patches: 4 <image> tokens per prompt


def tiny_processor() -> LlavaProcessor:
    """test_trainer's character tokenizer plus an <image> token, and a 16x16 CLIP image processor: all offline."""
    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<image>"]})
    images = CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE},
                                   crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=PATCH,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=VISION_TEMPLATE)


def tiny_vlm(processor: LlavaProcessor, seed: int = 0) -> LlavaForConditionalGeneration:
    """A random 1-layer CLIP tower + 2-layer Llama Llava, built from configs."""
    tokenizer = processor.tokenizer
    torch.manual_seed(seed)
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                              image_size=IMAGE_SIZE, patch_size=PATCH, projection_dim=16)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                       pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    return LlavaForConditionalGeneration(LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default", vision_feature_layer=-1))


def vision_pairs(n: int = 8, **extra) -> Dataset:
    """Conversational pairs with one PIL image each (an "images" column: TRL's `_is_vision_dataset`)."""
    return Dataset.from_list([{
        "images": [Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), color=(30 * i % 256, 70 * i % 256, 110 * i % 256))],
        "prompt": [{"role": "user", "content": f"What is {i}?"}],
        "chosen": [{"role": "assistant", "content": f"It is {i}"}],
        "rejected": [{"role": "assistant", "content": "no" + "!" * i}],
        **extra,
    } for i in range(n)])


@dataclass(frozen=True)
class Case:
    """One input: DPOConfig overrides, the data, LoRA or full fine-tuning, and which reference model is passed."""

    args: dict = field(default_factory=dict)
    data: str = "text"  # text | conversational | vision
    peft: bool = False
    # "other": a separate reference (seed 1, so the rewards are not all 0 at step 1 and no accuracy is a tie that
    # float rounding decides); None: no ref_model (TRL uses the adapter-disabled base, or precomputes from the policy).
    ref: str | None = "other"


CASES = {f"loss_{t}": Case(args=dict(loss_type=[t], label_smoothing=LABEL_SMOOTHING.get(t, 0.0))) for t in LOSS_TYPES}
CASES |= {
    "sigmoid_sft_weighted": Case(args=dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5])),
    "mpo_three_terms": Case(args=dict(loss_type=["sigmoid", "bco_pair", "sft"], loss_weights=[0.8, 0.2, 1.0])),
    "precompute_from_policy": Case(args=dict(precompute_ref_log_probs=True), ref=None),
    "precompute_from_ref_model": Case(args=dict(precompute_ref_log_probs=True)),
    "peft": Case(peft=True, ref=None),
    "peft_precompute_sigmoid_sft": Case(peft=True, ref=None, args=dict(
        precompute_ref_log_probs=True, loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5])),
    "use_weighting": Case(args=dict(use_weighting=True)),
    "ld_alpha": Case(args=dict(ld_alpha=0.5)),
    "ld_alpha_precompute_ipo": Case(args=dict(ld_alpha=0.5, precompute_ref_log_probs=True, loss_type=["ipo"])),
    # synced after step 1, so step 2's rewards are measured against the mixed reference
    "sync_ref_model": Case(args=dict(sync_ref_model=True, ref_model_sync_steps=1, ref_model_mixup_alpha=0.5)),
    "conversational": Case(data="conversational"),
    "conversational_peft": Case(data="conversational", peft=True, ref=None),
    "vision": Case(data="vision", args=dict(max_length=None)),  # TRL's VLM tests: truncation could cut image tokens
    "vision_peft": Case(data="vision", peft=True, ref=None, args=dict(max_length=None)),
}


def lora(vision: bool = False) -> LoraConfig:
    # Not the zero-initialised default: the policy starts away from the base (the reference), for the reason above.
    modules = r".*language_model.*\.(q_proj|v_proj)" if vision else ["q_proj", "v_proj"]
    return LoraConfig(r=4, lora_alpha=8, target_modules=modules, init_lora_weights=False)


def build(trainer_cls, case: Case, out, train_dataset=None, args=None, dtype=torch.float64, **recipe_kwargs):
    """A trainer for `case` on fresh models and data (seed 0 policy; seed 1 reference where one is passed)."""
    if case.data == "vision":
        processing = tiny_processor()
        model, ref = tiny_vlm(processing), tiny_vlm(processing, seed=1)
        dataset = vision_pairs()
    else:
        processing = tiny_tokenizer()
        model, ref = tiny_model(processing), tiny_model(processing, seed=1)
        dataset = conversational_pairs() if case.data == "conversational" else pairs(scores=False)
    model, ref = model.to(dtype), ref.to(dtype)
    return trainer_cls(model=model, ref_model=ref if case.ref == "other" else None,
                       args=config(out, **{**SGD, **case.args, **(args or {})}), processing_class=processing,
                       train_dataset=train_dataset if train_dataset is not None else dataset,
                       peft_config=lora(case.data == "vision") if case.peft else None, **recipe_kwargs)


@contextlib.contextmanager
def trl_own_lm_head():
    """TRL exactly as shipped: its fused LM head's own device rule (every position scored on a CPU)."""
    patched = trl_utils._use_triton
    trl_utils._use_triton = trl_use_triton
    try:
        yield
    finally:
        trl_utils._use_triton = patched


_TRL_LOGS: dict[tuple[str, torch.dtype], list[dict]] = {}


def trl_logs(name: str, tmp_path_factory, dtype=torch.float64) -> list[dict]:
    """TRL's log history for a case, trained once per session (each case is compared several times)."""
    if (name, dtype) not in _TRL_LOGS:
        with trl_own_lm_head():
            trainer = build(DPOTrainer, CASES[name], tmp_path_factory.mktemp("trl"), dtype=dtype)
            trainer.train()
        _TRL_LOGS[name, dtype] = trainer.state.log_history
    return _TRL_LOGS[name, dtype]


def assert_same_logs(ours: list[dict], theirs: list[dict], tolerance=FP64_TOLERANCE, extra_ok: tuple[str, ...] = (),
                     skip: tuple[str, ...] = ()) -> None:
    """Every metric TRL logged, step by step, equal within `tolerance` (but `skip` prefixes); no metric missing, none
    added (but `extra_ok` prefixes: a hook's own metrics)."""
    assert [h.get("step") for h in ours] == [h.get("step") for h in theirs] == [1, 2, 2]
    assert CORE_METRICS <= theirs[0].keys(), sorted(theirs[0])  # the comparison is not vacuous
    problems = []
    for ours_step, trl_step in zip(ours, theirs):
        step = trl_step.get("step")
        added = {k for k in ours_step.keys() - trl_step.keys() if not k.startswith(extra_ok)}
        missing = trl_step.keys() - ours_step.keys()
        if added or missing:
            problems.append(f"step {step}: keys added {sorted(added)}, missing {sorted(missing)}")
        for key in sorted((trl_step.keys() & ours_step.keys()) - TIMINGS):
            if not key.startswith(skip) and ours_step[key] != pytest.approx(trl_step[key], **tolerance):
                problems.append(f"step {step} {key}: RecipeDPOTrainer {ours_step[key]!r}, TRL {trl_step[key]!r}")
    assert not problems, "\n".join(problems)


def test_the_matrix_covers_every_trl_loss_type():
    documented = re.findall(r"`'(\w+)'`", DPOConfig.__dataclass_fields__["loss_type"].metadata["help"])
    assert documented == LOSS_TYPES


# --- every input TRL trains, with TRL's metrics --------------------------------------------------------------------
@pytest.mark.parametrize("share_prompts", [True, False], ids=["shared", "unshared"])
@pytest.mark.parametrize("name", list(CASES))
def test_trains_like_trl(tmp_path, tmp_path_factory, name, share_prompts):
    case = CASES[name]
    theirs = trl_logs(name, tmp_path_factory)
    trainer = build(RecipeDPOTrainer, case, tmp_path, share_prompts=share_prompts)
    trainer.train()
    assert next(trainer.model.parameters()).dtype == torch.float64
    assert_same_logs(trainer.state.log_history, theirs)
    before, after = trainer.shared_prompt_tokens()
    if share_prompts and case.data != "vision":  # the packed forward really ran, and ran fewer tokens
        assert 0 < after < before
    else:  # TRL's two rows per pair: never packed (images: multimodal models are not packed)
        assert (before, after) == (0, 0)


@pytest.mark.parametrize("share_prompts", [True, False], ids=["shared", "unshared"])
@pytest.mark.parametrize("name", ["loss_sigmoid", "peft", "conversational_peft"])
def test_trains_like_trl_in_float32(tmp_path, tmp_path_factory, name, share_prompts):
    """The presets' settings (sigmoid, LoRA, chat data) in float32, as users train: unpacked, every metric within
    rel 1e-4 / abs 1e-5 of TRL; packed, the metrics that are not differences of near-equal sums."""
    theirs = trl_logs(name, tmp_path_factory, dtype=torch.float32)
    trainer = build(RecipeDPOTrainer, CASES[name], tmp_path, dtype=torch.float32, share_prompts=share_prompts)
    trainer.train()
    assert_same_logs(trainer.state.log_history, theirs, FP32_TOLERANCE, skip=CANCELLING if share_prompts else ())


def test_vision_group_by_length_falls_back_to_trls_sampler_with_one_warning(tmp_path, tmp_path_factory):
    """The presets' `train_sampling_strategy: group_by_length` on image pairs, which stay untokenized until the
    collator: TRL's own DPOTrainer cannot start (transformers' grouping looks for `input_ids`); RecipeDPOTrainer
    samples as TRL does without grouping, says so once, and trains exactly TRL's run."""
    grouped = dict(train_sampling_strategy="group_by_length")
    with trl_own_lm_head(), pytest.raises(ValueError, match="Can only automatically infer lengths"):
        build(DPOTrainer, CASES["vision"], tmp_path / "trl", args=grouped).train()

    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    package = logging.getLogger("dpo_recipes")
    package.addHandler(handler)
    try:
        trainer = build(RecipeDPOTrainer, CASES["vision"], tmp_path / "ours", args=grouped)
        trainer.train()
    finally:
        package.removeHandler(handler)
    assert len(records) == 1, [r.getMessage() for r in records]
    assert "group_by_length" in records[0].getMessage()
    assert_same_logs(trainer.state.log_history, trl_logs("vision", tmp_path_factory))


# --- a hook at zero strength is TRL's sigmoid loss; where a hook cannot apply, one line says why --------------------
HOOK_TRAINS = ["loss_sigmoid", "sigmoid_sft_weighted", "precompute_from_policy", "peft_precompute_sigmoid_sft",
               "sync_ref_model", "conversational_peft"]
HOOK_REFUSES = {
    "use_weighting": "use_weighting",
    "ld_alpha": "ld_alpha",
    "loss_ipo": "has none",
    "vision": "text preference data only",
}


@pytest.mark.parametrize("name", HOOK_TRAINS)
def test_rdpo_at_zero_strength_trains_like_trl(tmp_path, tmp_path_factory, name):
    trainer = build(RecipeDPOTrainer, CASES[name], tmp_path, loss_hook="rdpo", rdpo_alpha=0.0)
    trainer.train()
    assert_same_logs(trainer.state.log_history, trl_logs(name, tmp_path_factory), extra_ok=("rdpo/",))
    assert "rdpo/length_diff" in trainer.state.log_history[0]


def one_line_refusal(excinfo, match: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message and re.search(match, message), message


@pytest.mark.parametrize("name", list(HOOK_REFUSES))
def test_rdpo_refuses_in_one_line_where_it_cannot_apply(tmp_path, name):
    with pytest.raises(DPORecipesError) as excinfo:
        build(RecipeDPOTrainer, CASES[name], tmp_path, loss_hook="rdpo", rdpo_alpha=0.1)
    one_line_refusal(excinfo, HOOK_REFUSES[name])


@pytest.mark.parametrize("name,match", [("vision", "images"), ("precompute_from_policy", "precompute_ref_log_probs")])
def test_anchor_refuses_in_one_line_where_it_cannot_apply(tmp_path, name, match):
    case = CASES[name]
    text = pairs(scores=False)
    marked = vision_pairs(anchor=True) if case.data == "vision" else text.add_column("anchor", [True] * len(text))
    with pytest.raises(DPORecipesError) as excinfo:
        build(RecipeDPOTrainer, case, tmp_path, train_dataset=marked, anchor_coef=1.0)
    one_line_refusal(excinfo, match)


# --- what TRL refuses, RecipeDPOTrainer refuses with TRL's own error -------------------------------------------------
TRL_REFUSES = {
    "sync_ref_model_with_peft": (Case(peft=True, ref=None, args=dict(sync_ref_model=True)), NotImplementedError),
    "exo_pair_without_label_smoothing": (Case(args=dict(loss_type=["exo_pair"])), ValueError),
    "use_weighting_with_aot": (Case(args=dict(use_weighting=True, loss_type=["aot"])), NotImplementedError),
    "vision_precompute": (Case(data="vision", args=dict(max_length=None, precompute_ref_log_probs=True)), ValueError),
}


@pytest.mark.parametrize("name", list(TRL_REFUSES))
def test_refuses_what_trl_refuses_with_trls_error(tmp_path, name):
    case, error = TRL_REFUSES[name]
    with trl_own_lm_head(), pytest.raises(error) as trl_refusal:
        build(DPOTrainer, case, tmp_path / "trl")
    with pytest.raises(error) as ours:
        build(RecipeDPOTrainer, case, tmp_path / "ours")
    assert str(ours.value) == str(trl_refusal.value)
