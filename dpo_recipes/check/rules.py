"""The pre-flight rules: settings TRL 1.16, PEFT or this project's layer ignore or override, and risky combinations.

Each rule mirrors one condition in the installed code and names it (file, function) in its comment, so a rule can be
checked against the source and dropped when the source changes. Levels:

- error: the recipe or TRL refuses to start with it (an unknown key, a combination TRL raises on, a missing package);
- ignored: accepted, but has no effect (or a smaller one than asked): the value is silently dropped or overridden;
- risky: takes effect, but is deprecated, or outside the ranges published recipes use, or likely to hurt the run;
- note: how the run will behave, for reading, never a warning.

Rules read only the parsed arguments, the model's config (no weights) and, when given, the data's token lengths.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
from typing import TYPE_CHECKING

from dpo_recipes.check.budget import learning_budget
from dpo_recipes.check.ranges import BETA_FAMILY, BETA_RANGES, LR_RANGES

if TYPE_CHECKING:
    from dpo_recipes.check.findings import Setup

# TRL 1.16 DPOTrainer._compute_loss reads `label_smoothing` in these branches only.
LABEL_SMOOTHING_LOSSES = {"robust", "exo_pair", "aot", "aot_unpaired"}
# DPOTrainer.__init__: only these loss types accept a non-default f_divergence_type.
F_DIVERGENCE_LOSSES = {"sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft"}
# What to use instead of keys the recipes' parser does not know (older TRL / transformers, alignment-handbook).
KEY_HINTS = {
    "torch_dtype": "ModelConfig calls it dtype now",
    "warmup_ratio": "transformers 5 removed it: warmup_steps below 1 is a ratio (warmup_steps: 0.1)",
    "max_prompt_length": "TRL 1.x's DPO has no prompt limit: max_length caps prompt + answer, and the recipe drops "
                         "pairs whose prompt alone fills it",
    "max_completion_length": "TRL 1.16's DPO has none: max_length caps prompt + answer",
    "dataset_mixture": "the alignment-handbook's own option: give one dataset_name (a file, folder or hub id)",
    "dataset_mixer": "the alignment-handbook's own option: give one dataset_name (a file, folder or hub id)",
    "dataset_splits": "the alignment-handbook's own option: dataset_train_split names the split",
    "hub_model_revision": "the alignment-handbook's own option: hub_model_id names the repository",
    "chat_template": "the alignment-handbook's own option: put the template in the model folder (chat_template.jinja)",
    "rpo_alpha": "removed from TRL: loss_type [sigmoid, sft] with loss_weights [1, alpha] is RPO",
    "reference_free": "removed from TRL's DPO: recipes/simpo.py or recipes/orpo.py train without a reference",
}
# Precedence of value sources (config.value_sources): a higher one was meant to win.
_RANK = {"default": 0, "hardware": 1, "recipe": 2, "preset": 3, "yaml": 4, "cli": 5}


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# --- the recipe's own refusals (recipes/*.py parse() and main(), run.check_before_model) ----------------------------
def recipe_refusals(s: Setup):
    if s.recipe == "dpo_full" and s.peft:  # recipes/dpo_full.py parse()
        yield s.find("error", "use_peft", "recipes/dpo_full.py trains every weight and refuses LoRA.",
                     "use recipes/dpo_lora.py (--recipe dpo_lora), or use_peft: false.")
    if s.recipe == "dpo_full" and not s.recipe_args.dataset_name:  # recipes/dpo_full.py parse()
        yield s.find("error", "dataset_name", "recipes/dpo_full.py needs --dataset_name (full-parameter DPO of your "
                     "pairs; the identity run is a LoRA job).", "set dataset_name: a file, folder or hub id.")
    if s.recipe == "simpo" and s.args.loss_type != "simpo":  # recipes/simpo.py main()
        yield s.find("error", "loss_type", "recipes/simpo.py runs SimPO and refuses other CPO losses.",
                     "loss_type: simpo.")
    if s.recipe == "simpo" and s.args.cpo_alpha:  # recipes/simpo.py main() warns
        yield s.find("note", "cpo_alpha", "adds CPO's behaviour-cloning term: CPO-SimPO, not plain SimPO.")
    if s.recipe_args.merge and not s.peft:  # run.check_before_model
        yield s.find("error", "merge", "--merge merges a LoRA adapter, but use_peft is false.", "drop merge.")
    hook = getattr(s.recipe_args, "loss_hook", None)
    if hook is not None and s.trainer != "dpo":  # run.check_before_model
        yield s.find("error", "loss_hook", f"recipes/{s.recipe}.py trains with its trainer's own loss and refuses "
                     "DPO's loss hooks.", "drop loss_hook, or run recipes/dpo_lora.py.")
    elif hook is not None:  # trainer.check_hook_config, called by run.check_before_model and RecipeDPOTrainer
        from dpo_recipes.errors import DPORecipesError
        from dpo_recipes.train.hooks import check_hook_config

        try:
            check_hook_config(hook, s.args)
        except DPORecipesError as exc:
            yield s.find("error", "loss_hook", str(exc))


# --- TRL 1.16 DPOTrainer (trl/trainer/dpo_trainer.py) and DPOConfig ------------------------------------------------
def dpo_trainer(s: Setup):
    if s.trainer != "dpo":
        return
    a, losses = s.args, set(s.loss_types)
    if a.padding_free:  # DPOTrainer.__init__: warns, then self.padding_free = False
        yield s.find("ignored", "padding_free", "TRL 1.16's DPOTrainer warns and falls back to padded batches "
                     "(DPOTrainer.__init__: 'temporarily unavailable').", "drop padding_free.")
    if a.label_smoothing and not losses & LABEL_SMOOTHING_LOSSES:  # _compute_loss reads it in those branches only
        yield s.find("ignored", "label_smoothing", f"loss_type {s.loss_types} never reads it: DPOTrainer._compute_loss"
                     " uses label_smoothing only for robust, exo_pair, aot and aot_unpaired.",
                     "drop it, or loss_type: robust (label-flip probability < 0.5) or exo_pair (epsilon ~1e-3).")
    if "robust" in losses and not 0 <= a.label_smoothing < 0.5:  # DPOTrainer.__init__ only warns
        yield s.find("risky", "label_smoothing", "the robust loss divides by 1 - 2 * label_smoothing: it must lie in "
                     "[0, 0.5) (TRL only warns).", "0.1, the Robust DPO paper's value.")
    if "exo_pair" in losses and a.label_smoothing == 0:  # DPOTrainer.__init__ raises ValueError
        yield s.find("error", "label_smoothing", "TRL refuses exo_pair with label_smoothing 0.", "label_smoothing: "
                     "1e-3 (the EXO paper's).")
    if a.pad_token is not None:  # DPOConfig.__post_init__ FutureWarning; DPOTrainer.__init__ still pads with it
        yield s.find("risky", "pad_token", "deprecated since TRL 1.1 and removed in 2.0; 1.16 still pads with it and "
                     "writes it into the tokenizer the recipe evaluates and saves with.",
                     "drop it: the recipe's tokenizer pads with its own pad token, else EOS (models.load_tokenizer).")
    if a.truncation_mode == "keep_end":  # DPOConfig.__post_init__ FutureWarning; run.load_train_data drops anyway
        yield s.find("risky", "truncation_mode", "deprecated (removed in TRL 2.0). Its point, keeping pairs whose "
                     "prompt fills max_length, is lost here: the recipe drops those pairs as keep_start does "
                     "(load_train_data, drop_prompt_too_long); keep_end only cuts long rows from the left, so chosen "
                     "and rejected lose different prompt tokens.", "keep_start, and a larger max_length.")
    if a.f_divergence_type != "reverse_kl" and not losses <= F_DIVERGENCE_LOSSES:  # DPOTrainer.__init__ raises
        yield s.find("error", "f_divergence_type", f"TRL refuses it with loss_type {s.loss_types}: only "
                     f"{sorted(F_DIVERGENCE_LOSSES)} take a non-default f-divergence.", "reverse_kl.")
    if s.configured("f_alpha_divergence_coef") and a.f_divergence_type != "alpha_divergence":
        yield s.find("ignored", "f_alpha_divergence_coef", "read only with f_divergence_type alpha_divergence "
                     "(DPOTrainer._compute_loss).", "drop it, or f_divergence_type: alpha_divergence.")
    if s.configured("discopop_tau") and "discopop" not in losses:  # _compute_loss, 'discopop' branch only
        yield s.find("ignored", "discopop_tau", "read only by loss_type discopop.", "drop it.")
    if a.use_weighting and losses & {"aot", "aot_unpaired"}:  # DPOTrainer.__init__ raises NotImplementedError
        yield s.find("error", "use_weighting", "TRL refuses WPO weighting with the aot losses (they sort samples).",
                     "use_weighting: false.")
    if a.ld_alpha is not None and not 0 <= a.ld_alpha <= 1:
        yield s.find("risky", "ld_alpha", "LD-DPO's alpha must lie in [0, 1] (DPOConfig's docstring).", "0.5.")


def reference_settings(s: Setup):
    """DPO and KTO: precompute, TR-DPO's synced reference, and the recipe's reference cache."""
    if s.trainer not in ("dpo", "kto"):
        return
    a = s.args
    if s.configured("precompute_ref_batch_size") and not a.precompute_ref_log_probs:  # read in precompute only
        yield s.find("ignored", "precompute_ref_batch_size", "read only with precompute_ref_log_probs: true.",
                     "drop it.")
    for name in ("ref_model_mixup_alpha", "ref_model_sync_steps"):  # SyncRefModelCallback only with sync_ref_model
        if s.configured(name) and not a.sync_ref_model:
            yield s.find("ignored", name, "read only with sync_ref_model: true (TR-DPO).", "drop it.")
    if a.sync_ref_model and s.peft:  # TRL's DPOTrainer/KTOTrainer.__init__ refuse it (not implemented with PEFT)
        yield s.find("error", "sync_ref_model", "TRL refuses it with LoRA: the reference is the base with the adapter "
                     "disabled, there is no reference model to sync.", "sync_ref_model: false.")
    if a.sync_ref_model and a.precompute_ref_log_probs:  # DPOTrainer/KTOTrainer.__init__ raise ValueError
        yield s.find("error", "sync_ref_model", "TRL refuses it with precompute_ref_log_probs (precomputed "
                     "log-probs would go stale).", "one of them.")
    if s.trainer == "dpo" and a.precompute_ref_log_probs:
        yield s.find("note", "precompute_ref_log_probs", "TRL runs the reference over every training pair before "
                     "step 1 (even when max_steps trains on fewer) and keys that cache on the dataset's fingerprint, "
                     "random for data built in memory as the recipe builds it: every run pays it again. The recipe's "
                     "reference_cache keeps log-probs across runs.")
    if s.trainer != "dpo" or not s.recipe_args.reference_cache:
        return
    from dpo_recipes.train.distributed import fsdp_requested

    # RecipeDPOTrainer._open_reference_cache returns None (no cache) in these cases.
    reasons = [
        (a.precompute_ref_log_probs, "precompute_ref_log_probs: TRL reads the reference from the precomputed columns"),
        (a.sync_ref_model, "sync_ref_model: a reference that changes has no stable key"),
        (s.zero_stage == 3, "ZeRO-3 shards the weights: no honest key"),
        (fsdp_requested(), "FSDP shards the weights: no honest key"),
        (s.peft and s.model_args.lora_modules_to_save,
         "lora_modules_to_save trains base modules next to the adapter: the reference drifts")]
    off = next((why for applies, why in reasons if applies), None)
    if off:
        level = "ignored" if s.configured("reference_cache") else "note"
        yield s.find(level, "reference_cache", f"the reference cache turns itself off with {off} "
                     "(RecipeDPOTrainer._open_reference_cache).")


def model_loading(s: Setup):
    """How the recipes load the model (run.load_model_for -> models.load_model) and hand it to the trainer."""
    m, a = s.model_args, s.args
    for name in ("load_in_4bit", "load_in_8bit", "bnb_4bit_quant_type", "use_bnb_nested_quant",
                 "bnb_4bit_quant_storage"):
        if s.configured(name) and (s.value(name) or not name.startswith("load_in")):  # load_in_*: false is no ask
            yield s.find("ignored", name, "the recipes load the model unquantized (models.load_model gets no "
                         "quantization_config, and none is passed to the trainer): it trains at full size.",
                         "drop it; with LoRA, dtype: bfloat16 halves the base weights' memory.")
    if a.model_init_kwargs is not None:
        if s.trainer in ("orpo", "cpo"):  # ORPOTrainer/CPOTrainer.__init__ raise for an instantiated model
            yield s.find("error", "model_init_kwargs", f"TRL's {s.trainer.upper()}Trainer refuses it: the recipe "
                         "passes a loaded model.", "drop it; dtype and attn_implementation are ModelConfig fields.")
        elif s.reference == "copy":  # DPOTrainer.__init__: ref_model_init_kwargs = model_init_kwargs
            yield s.find("risky", "model_init_kwargs", "ignored for the policy (the recipe passes a loaded model), "
                         "but TRL loads the reference copy with it: policy and reference may differ.",
                         "drop it; use dtype / attn_implementation, which both models get.")
        else:  # DPOTrainer/KTOTrainer.__init__ warn: 'The model_init_kwargs will be ignored'
            yield s.find("ignored", "model_init_kwargs", "the recipe passes a loaded model, and TRL ignores "
                         "model_init_kwargs for it.", "drop it; dtype and attn_implementation are ModelConfig fields.")
    attention = m.attn_implementation or ""
    if attention.startswith("flash_attention") and (s.on_cpu or not _installed("flash_attn")):
        yield s.find("error", "attn_implementation", "transformers refuses it at load time: flash attention needs a "
                     "CUDA GPU and the flash-attn package" + (" (not installed)." if not _installed("flash_attn")
                                                             else "."), "sdpa (the default), or leave it unset.")
    if s.model and s.model.get("lm_head_adapted") and s.trainer in ("dpo", "kto"):  # DPO/KTOTrainer.__init__ raise
        yield s.find("error", "lora_target_modules", "TRL refuses an adapter on lm_head: log-probs are computed from "
                     "lm_head.weight directly, so it would never train.", "remove lm_head from the targets.")
    coef = getattr(a, "router_aux_loss_coef", None)
    if coef and s.model and not s.model.get("moe"):  # DPO/KTOTrainer.__init__ raise for a non-MoE model
        yield s.find("error", "router_aux_loss_coef", f"TRL refuses it: {s.model['name']} is not a mixture-of-experts "
                     "model that returns router logits.", "drop it.")


def peft_settings(s: Setup):
    m = s.model_args
    lora = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_target_parameters",
            "lora_modules_to_save", "lora_task_type", "use_rslora", "use_dora", "lora_top_fraction")
    if not s.peft:  # trl get_peft_config returns None when use_peft is false
        for name in lora:
            if s.configured(name):
                yield s.find("ignored", name, "use_peft is false: TRL's get_peft_config builds no LoRA config, every "
                             "weight trains.", "use_peft: true for LoRA, or drop the lora_* keys.")
        return
    if m.lora_dropout and s.configured("lora_dropout") and getattr(s.args, "disable_dropout", False):
        # TRL's disable_dropout_in_model sets p = 0 on every nn.Dropout after get_peft_model, and PEFT's lora_dropout
        # is an nn.Dropout (peft/tuners/lora/layer.py, update_layer)
        yield s.find("ignored", "lora_dropout", "disable_dropout (true) zeroes every nn.Dropout after the adapter is "
                     "added, PEFT's LoRA dropout included (trl disable_dropout_in_model).",
                     "lora_dropout: 0, or disable_dropout: false (which also turns the model's own dropout on).")


def training_arguments(s: Setup):
    a = s.args
    for name in ("do_train", "do_eval", "do_predict"):  # transformers TrainingArguments: 'not directly used by Trainer'
        if s.configured(name):
            yield s.find("ignored", name, "Trainer does not read it, and neither do the recipes (transformers' "
                         "TrainingArguments docstring: 'not directly used by Trainer').",
                         "drop it; eval_strategy decides evaluation.")
    for old, new in (("gradient_checkpointing", "activation_checkpointing"),
                     ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs")):
        # TrainingArguments.__post_init__ (transformers 5.23): the old name is used only when the new one is unset
        if s.configured(old) and s.configured(new) and _rank(s.source(old)) > _rank(s.source(new)):
            yield s.find("ignored", old, f"{new} ({s.source(new)}) is also set, and transformers uses the deprecated "
                         f"{old} only when {new} is unset.", f"set {new} instead.")
    from transformers.trainer_optimizer import _BITSANDBYTES_OPTIMIZERS

    optim = getattr(a.optim, "value", a.optim)
    if optim in {getattr(o, "value", o) for o in _BITSANDBYTES_OPTIMIZERS} and not _installed("bitsandbytes"):
        yield s.find("error", "optim", "a bitsandbytes optimizer, and bitsandbytes is not installed: transformers "
                     "raises when training starts (trainer_optimizer._get_bitsandbytes_optimizer).", "adamw_torch.")
    if a.use_liger_kernel:
        if not _installed("liger_kernel"):  # transformers integrations.liger.apply_liger_kernel raises ImportError
            yield s.find("error", "use_liger_kernel", "liger-kernel is not installed: transformers raises when "
                         "training starts.", "drop use_liger_kernel.")
        elif s.trainer in ("dpo", "kto"):  # DPO/KTOTrainer.__init__: fused_linear_cross_entropy forced off
            yield s.find("ignored", "use_liger_kernel", "deprecated in TRL 1.16; its fused linear cross-entropy is "
                         "forced off (TRL's fused LM head stays), only Liger's layer kernels apply"
                         + ("; the recipe's shared prompts turn off with it (RecipeDPOTrainer)." if s.trainer == "dpo"
                            else "."), "drop it.")
    if getattr(a, "activation_offloading", False) and s.on_cpu:
        # DPO/KTOTrainer.__init__ -> trl get_act_offloading_ctx_manager -> OffloadActivations reads
        # torch.accelerator.current_accelerator().type, None without an accelerator (AttributeError, checked here)
        yield s.find("error", "activation_offloading", "it offloads activations from an accelerator to the CPU; "
                     "without one, TRL's OffloadActivations fails at trainer construction.", "drop it on a CPU.")
    if s.trainer in ("orpo", "cpo") and s.configured("remove_unused_columns") and a.remove_unused_columns:
        # ORPO/CPOTrainer.__init__ set it to False for their collator (with a warning)
        yield s.find("ignored", "remove_unused_columns", f"TRL's {s.trainer.upper()}Trainer sets it to false: its "
                     "collator needs the tokenized columns.", "drop it.")
    if s.trainer in ("orpo", "cpo"):
        # ORPO/CPOTrainer take is_encoder_decoder from the model's config and read max_completion_length only in the
        # encoder-decoder branch of tokenize_row
        if s.configured("is_encoder_decoder"):
            yield s.find("ignored", "is_encoder_decoder", "taken from the model's config when a model is given.",
                         "drop it.")
        if s.configured("max_completion_length") and not (s.model and s.model.get("encoder_decoder")):
            yield s.find("ignored", "max_completion_length", "read only for encoder-decoder models; decoder-only "
                         "rows are cut to max_length (tokenize_row).", "drop it; max_length caps prompt + answer.")
    if s.trainer == "kto" and s.loss_types != ["apo_zero_unpaired"]:  # KTOTrainer.__init__ raises for the KL losses
        if a.per_device_train_batch_size <= 1:
            yield s.find("error", "per_device_train_batch_size", "TRL refuses KTO with 1 row per batch: the KL term "
                         "is estimated from mismatched rows of the same batch.", "2 or more.")
        if getattr(a.train_sampling_strategy, "value", a.train_sampling_strategy) != "sequential":
            yield s.find("error", "train_sampling_strategy", "TRL refuses it for KTO: the KL completions are paired "
                         "with their neighbours in a fixed-order batch.", "sequential (KTOConfig's default).")
    if s.trainer != "dpo":
        for name in ("share_prompts", "reference_cache", "odpo_alpha", "odpo_ratio", "rdpo_alpha", "anchor_coef"):
            if s.configured(name):
                yield s.find("ignored", name, f"a RecipeDPOTrainer setting; recipes/{s.recipe}.py runs TRL's "
                             f"{s.trainer.upper()}Trainer, which has no such option.", "drop it.")
    else:
        hook = s.recipe_args.loss_hook
        for name, owner in (("odpo_alpha", "odpo"), ("odpo_ratio", "odpo"), ("rdpo_alpha", "rdpo")):
            if s.configured(name) and hook != owner:
                yield s.find("ignored", name, f"read only with loss_hook: {owner} (loss_hook is {hook!r}).",
                             f"loss_hook: {owner}, or drop it.")
    if a.dataset_num_proc and a.dataset_num_proc > (os.cpu_count() or 1):
        yield s.find("note", "dataset_num_proc", f"more tokenizing processes than this machine's {os.cpu_count()} "
                     "cores: slower, not faster, here.")


def _rank(source: str) -> int:
    return _RANK.get(source.split(":", 1)[0], 0)


def speed_levers(s: Setup):
    """The DPO recipe's shared prompts (RecipeDPOTrainer.__init__, shared_prompt.unsupported_reason)."""
    if s.trainer != "dpo" or not s.recipe_args.share_prompts:
        return
    why = ("use_liger_kernel replaces the model's forward" if s.args.use_liger_kernel
           else s.model.get("shared_prompt_off") if s.model else None)
    if why:
        level = "ignored" if s.configured("share_prompts") else "note"
        yield s.find(level, "share_prompts", f"shared prompts turn themselves off: {why}; every prompt runs twice "
                     "per pair (TRL's two-row layout).")


def precision_and_memory(s: Setup):
    from dpo_recipes.config import presets

    a, m = s.args, s.model_args
    if a.bf16 and s.on_cpu and not presets.cpu_has_fast_bf16():
        yield s.find("risky", "bf16", "this CPU has no AVX512-BF16 or AMX, so bf16 matmuls are emulated"
                     + _bf16_ratio() + " (presets.hardware_defaults picks fp32 here).", "bf16: false.")
    if not s.peft and m.dtype in ("bfloat16", "float16") and s.zero_stage is None:
        # Trainer's AdamW updates parameters in their own dtype (no fp32 master copy outside DeepSpeed): a bf16
        # weight moves only by steps of about 2^-8 of itself, so lr ~1e-6 updates round away
        yield s.find("risky", "dtype", f"full-parameter training with {m.dtype} weights and no fp32 master copy (no "
                     "DeepSpeed): updates smaller than the weights' rounding step (~0.4% of a weight in bf16) are "
                     "lost, which lr ~1e-6 updates are.", "dtype: float32 with bf16: true (autocast), or a DeepSpeed "
                     "launch (accelerate_configs/zero*.yaml), which keeps fp32 master weights.")
    if a.gradient_checkpointing and s.reference in ("adapter", "copy"):
        # TRL 1.16 runs each reference forward inside disable_gradient_checkpointing (torch.no_grad, checkpointing
        # off), so the reference is neither checkpointed nor recomputed. Re-enabling it calls transformers 5's
        # enable_input_require_grads, which registers one more forward hook on the input embeddings each time
        # without removing the last (measured: +1 hook per reference forward; ~1 us per hook per forward).
        yield s.find("note", "gradient_checkpointing", "with a reference forward every step, TRL turns checkpointing "
                     "off around it (no recomputation, no stored activations: no correctness concern); each "
                     "re-enable adds one forward hook to the input embeddings (transformers 5 "
                     "enable_input_require_grads): ~10 ms per forward after 10k steps, measured.")
    if (s.trainer == "dpo" and s.peft and s.zero_stage == 3 and a.gradient_checkpointing
            and (a.gradient_checkpointing_kwargs or {}).get("use_reentrant") is False):
        yield s.find("ignored", "gradient_checkpointing_kwargs", "TRL forces use_reentrant=True for LoRA under ZeRO-3 "
                     "(DPOTrainer.__init__, trl#2514).", "drop use_reentrant.")
    limit = s.model.get("max_position_embeddings") if s.model else None
    if limit and a.max_length and a.max_length > limit:
        yield s.find("risky", "max_length", f"longer than the {limit} positions {s.model['name']} was trained on.",
                     f"max_length: {limit} or less.")


def _bf16_ratio() -> str:
    from dpo_recipes.check.estimate import matmul_gflops

    bf16, fp32 = matmul_gflops("cpu", "bfloat16"), matmul_gflops("cpu", "float32")
    return f" (matmul probe here: bf16 {bf16:.0f} against fp32 {fp32:.0f} GFLOP/s)"


def seed_ranges(s: Setup):
    lr_kind = ("lora+anchor" if getattr(s.recipe_args, "anchor_coef", 0) else "lora") if s.peft else "full"
    low, high = LR_RANGES[lr_kind]
    if not low <= s.args.learning_rate <= high:
        yield s.find("risky", "learning_rate", f"outside the {lr_kind} seed range {low:g}-{high:g} (published DPO / "
                     "ORPO recipes and this project's presets; see check/ranges.py).",
                     f"start inside {low:g}-{high:g}.")
    family = next((BETA_FAMILY[t] for t in s.loss_types if t in BETA_FAMILY), "dpo")
    if s.loss_types == ["sft"]:
        return  # beta unused
    low, high = BETA_RANGES[family]
    if not low <= s.args.beta <= high:
        yield s.find("risky", "beta", f"outside the {family} seed range {low:g}-{high:g} (check/ranges.py "
                     "cites where it comes from).", f"start inside {low:g}-{high:g}.")


def data_lengths(s: Setup):
    if not s.data or not s.data.get("pair_tokens"):
        return
    lengths, limit = sorted(s.data["pair_tokens"]), s.args.max_length
    median = statistics.median(lengths)
    if limit is not None and limit < median:  # the collator cuts each row at max_length (DataCollatorForPreference)
        cut = sum(n > limit for n in lengths) / len(lengths)
        covers = -(-lengths[int(0.95 * (len(lengths) - 1))] // 64) * 64  # 95% of the pairs, rounded up to 64
        yield s.find("risky", "max_length", f"below the data's median pair length of {median:.0f} tokens (prompt + "
                     f"longer answer): {cut:.0%} of the pairs are cut, most answers lose their end.",
                     f"max_length: {covers} (covers 95% of the pairs), with gradient checkpointing if memory is short.")


RULES = (recipe_refusals, dpo_trainer, reference_settings, model_loading, peft_settings, training_arguments,
         speed_levers, precision_and_memory, seed_ranges, data_lengths, learning_budget)


def check(setup: Setup) -> list:
    """Every rule's findings, in rule order."""
    return [f for rule in RULES for f in rule(setup)]
