"""RecipeDPOTrainer on a tiny random Llama: alpha=0 reproduces TRL exactly, hooks match an independent forward,
scores flow through TRL's data path, metrics are logged, and impossible combinations fail with a clear message."""

from __future__ import annotations

import string

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from tokenizers import Tokenizer, decoders, models
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from trl import DPOConfig, DPOTrainer

from dpo_recipes.errors import DPORecipesError
from dpo_recipes.train.losses import odpo_loss, rdpo_loss
from dpo_recipes.train.trainer import RecipeDPOTrainer

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer with a ChatML-style template: no download, ~100 tokens."""
    specials = ["<pad>", "<|im_start|>", "<|im_end|>"]
    vocab = {t: i for i, t in enumerate(specials + list(string.printable))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    backend.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<|im_end|>")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    return tok


def tiny_model(tokenizer, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    return LlamaForCausalLM(config)


def pairs(n: int = 8, scores: bool = True) -> Dataset:
    rows = []
    for i in range(n):
        row = {"prompt": f"Q{i}: name {i}?", "chosen": " I am Ada" + "!" * (i % 3), "rejected": f" no {i * 7}"}
        if scores:
            row |= {"score_chosen": 2.0 + i, "score_rejected": 1.0 + 0.5 * i}
        rows.append(row)
    return Dataset.from_list(rows)


def config(tmp_path, **overrides) -> DPOConfig:
    values = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, per_device_eval_batch_size=4,
                  max_steps=2, learning_rate=1e-3, logging_steps=1, report_to="none", save_strategy="no",
                  beta=0.1, use_cpu=True, disable_tqdm=True, gradient_checkpointing=False, seed=0)
    values.update(overrides)
    return DPOConfig(**values)


def make(tmp_path, trainer_cls=RecipeDPOTrainer, dataset=None, peft=False, **kwargs):
    tok = tiny_tokenizer()
    cfg_keys = {k: kwargs.pop(k) for k in list(kwargs) if k in DPOConfig.__dataclass_fields__}
    # Full fine-tuning needs a reference: an identical copy (TRL would otherwise reload it from the model's hub id)
    ref_model = None if peft or cfg_keys.get("precompute_ref_log_probs") else tiny_model(tok)
    return trainer_cls(model=tiny_model(tok), ref_model=ref_model, args=config(tmp_path, **cfg_keys),
                       processing_class=tok,
                       train_dataset=dataset if dataset is not None else pairs(),
                       peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]) if peft else None,
                       **kwargs)


def first_batch(trainer):
    return trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))


def loss_and_grads(trainer, batch):
    trainer.model.train()
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def independent_logps(model, batch):
    """Summed completion log-probs from plain logits (no fused head), chosen half then rejected half."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    logp = logits[:, :-1].log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    return (logp * batch["completion_mask"][:, 1:]).sum(1).chunk(2)


# --- alpha = 0 is TRL's sigmoid loss, exactly ----------------------------------------------------------------------
SETUPS = {
    "full_ref_model": dict(),
    "lora_precomputed_sigmoid_sft": dict(peft=True, precompute_ref_log_probs=True, loss_type=["sigmoid", "sft"],
                                         loss_weights=[1.0, 0.5]),
    "lora_adapter_disabled_ref": dict(peft=True, loss_type=["sigmoid", "ipo"]),
}


@pytest.mark.parametrize("hook", ["odpo", "rdpo"])
@pytest.mark.parametrize("setup", list(SETUPS))
def test_alpha_zero_reproduces_trl_loss_and_gradients_exactly(tmp_path, hook, setup):
    trainer = make(tmp_path, loss_hook=hook, odpo_alpha=0.0, rdpo_alpha=0.0, **SETUPS[setup])
    batch = first_batch(trainer)
    hooked_loss, hooked_grads = loss_and_grads(trainer, batch)
    trainer.loss_hook = None  # the very same trainer, model and batch through TRL's own `_compute_loss`
    trl_loss, trl_grads = loss_and_grads(trainer, batch)
    assert torch.equal(hooked_loss, trl_loss)
    assert hooked_grads.keys() == trl_grads.keys() and hooked_grads
    for name in trl_grads:
        assert torch.equal(hooked_grads[name], trl_grads[name]), name


def test_no_hook_is_trl_dpo_trainer(tmp_path):
    ours, theirs = make(tmp_path / "a", share_prompts=False), make(tmp_path / "b", trainer_cls=DPOTrainer)
    batch = first_batch(ours)
    assert torch.equal(loss_and_grads(ours, batch)[0], loss_and_grads(theirs, batch)[0])
    assert "score_chosen" not in batch  # no hook: TRL's batch, untouched
    shared = make(tmp_path / "c")  # prompts run once per pair: the same loss to float rounding
    torch.testing.assert_close(loss_and_grads(shared, batch)[0], loss_and_grads(theirs, batch)[0], rtol=1e-6, atol=1e-6)


# --- with alpha != 0 the hooks compute the paper's loss on the model's real log-probs -------------------------------
@pytest.mark.parametrize("hook", ["odpo", "rdpo"])
def test_hook_loss_matches_independent_forward(tmp_path, hook):
    trainer = make(tmp_path, loss_hook=hook, odpo_alpha=1.0, rdpo_alpha=0.05)
    batch = first_batch(trainer)
    trainer.model.eval()
    loss = trainer.compute_loss(trainer.model, dict(batch)).double()
    chosen, rejected = independent_logps(trainer.model, batch)
    ref_chosen, ref_rejected = independent_logps(trainer.ref_model, batch)
    if hook == "odpo":
        expected = odpo_loss(chosen, rejected, ref_chosen, ref_rejected, batch["score_chosen"],
                             batch["score_rejected"], beta=0.1, alpha=1.0)
    else:
        lengths_w, lengths_l = batch["completion_mask"].sum(1).chunk(2)
        expected = rdpo_loss(chosen, rejected, ref_chosen, ref_rejected, lengths_w, lengths_l, beta=0.1, alpha=0.05)
    assert loss.item() == pytest.approx(expected.mean().item(), rel=1e-5)


def test_scores_survive_tokenization_pruning_and_collation(tmp_path):
    trainer = make(tmp_path, loss_hook="odpo", precompute_ref_log_probs=True, peft=True)
    batch = first_batch(trainer)
    assert batch["score_chosen"].dtype == torch.float64
    assert {"ref_chosen_logps", "score_chosen", "score_rejected"} <= batch.keys()
    assert torch.all(batch["score_chosen"] > batch["score_rejected"])


def test_odpo_offset_is_alpha_log_gap_in_logged_metrics(tmp_path):
    trainer = make(tmp_path, dataset=pairs(4), loss_hook="odpo", odpo_alpha=2.0, max_steps=1)
    trainer.train()
    logged = trainer.state.log_history[0]
    expected = 2.0 * torch.log(torch.tensor([1.0, 1.5, 2.0, 2.5])).mean().item()
    assert logged["odpo/offset"] == pytest.approx(expected, rel=1e-6)
    assert {"odpo/accuracy", "odpo/loss", "rewards/chosen", "rewards/margins", "logps/chosen"} <= logged.keys()


def test_rdpo_logs_length_difference_in_tokens_and_trains(tmp_path):
    trainer = make(tmp_path, loss_hook="rdpo", rdpo_alpha=0.1, eval_strategy="steps", eval_steps=2,
                   eval_dataset=pairs(4))
    trainer.train()
    train_logs = [h for h in trainer.state.log_history if "rdpo/length_diff" in h]
    assert len(train_logs) == 2 and all(h["loss"] > 0 for h in train_logs)
    assert any("eval_rdpo/length_diff" in h for h in trainer.state.log_history)
    batch = first_batch(trainer)
    lw, ll = batch["completion_mask"].sum(1).chunk(2)
    assert {"rdpo/length_margin", "rewards/accuracies"} <= train_logs[0].keys()
    assert torch.all(lw > 0) and torch.all(ll > 0)


# --- errors a user can act on ---------------------------------------------------------------------------------------
def test_odpo_without_scores_names_the_missing_column(tmp_path):
    with pytest.raises(DPORecipesError, match=r"score_chosen.*score_rejected.*train_dataset"):
        make(tmp_path, dataset=pairs(scores=False), loss_hook="odpo")


@pytest.mark.parametrize("ratio,row", [(False, {"score_chosen": 1.0, "score_rejected": 1.0}),
                                       (True, {"score_chosen": 1.0, "score_rejected": -1.0})])
def test_odpo_rejects_scores_where_the_log_is_undefined(tmp_path, ratio, row):
    data = pairs(3).to_list()
    data[1] |= row
    with pytest.raises(DPORecipesError, match="row 1"):
        make(tmp_path, dataset=Dataset.from_list(data), loss_hook="odpo", odpo_ratio=ratio)


@pytest.mark.parametrize("overrides,match", [
    (dict(use_liger_kernel=True), "use_liger_kernel"),
    (dict(loss_type=["ipo"]), "has none"),
    (dict(ld_alpha=0.5), "ld_alpha"),
    (dict(use_weighting=True), "use_weighting"),
])
def test_hook_refuses_combinations_it_cannot_honour(tmp_path, overrides, match):
    with pytest.raises(DPORecipesError, match=match):
        make(tmp_path, loss_hook="rdpo", **overrides)


def test_unknown_hook_name_is_an_error(tmp_path):
    with pytest.raises(DPORecipesError, match="odpo"):
        make(tmp_path, loss_hook="simpo")


def test_trl_loss_types_pass_through_untouched_without_hook(tmp_path):
    for i, loss_type in enumerate(["ipo", "hinge", "robust", "sigmoid_norm", "apo_zero"]):
        kw = dict(loss_type=[loss_type], label_smoothing=0.1 if loss_type == "robust" else 0.0)
        ours = make(tmp_path / f"a{i}", share_prompts=False, **kw)
        theirs = make(tmp_path / f"b{i}", trainer_cls=DPOTrainer, **kw)
        batch = first_batch(ours)
        assert torch.equal(loss_and_grads(ours, batch)[0], loss_and_grads(theirs, batch)[0]), loss_type


def test_independent_logps_helper_agrees_with_trl(tmp_path):
    # Guards the test above: the plain-logits computation matches TRL's fused head up to float32 rounding.
    trainer = make(tmp_path)
    batch = first_batch(trainer)
    chosen, _ = independent_logps(trainer.model, batch)
    trainer.model.eval()
    trainer.compute_loss(trainer.model, dict(batch))
    assert trainer._metrics["eval"]["logps/chosen"][-1] == pytest.approx(chosen.mean().item(), rel=1e-5)


def test_odpo_batch_without_scores_is_an_actionable_error(tmp_path):
    trainer = make(tmp_path, loss_hook="odpo")
    batch = {k: v for k, v in first_batch(trainer).items() if not k.startswith("score_")}
    with pytest.raises(DPORecipesError, match="score_chosen.*ScoreCollator"):
        trainer.compute_loss(trainer.model, batch)


def test_group_by_length_batches_pairs_of_similar_length_and_pads_less(tmp_path):
    rows = [{"prompt": "Q" + "x" * (5 + 37 * i % 60), "chosen": " a" * (1 + i % 4), "rejected": " b" * (2 + i % 3)}
            for i in range(200)]  # transformers groups within megabatches of up to 50 batches: enough pairs for a few
    grouped = make(tmp_path, dataset=Dataset.from_list(rows), peft=True, loss_hook=None,
                   train_sampling_strategy="group_by_length", per_device_train_batch_size=4)
    plain = make(tmp_path, dataset=Dataset.from_list(rows), peft=True, loss_hook=None,
                 per_device_train_batch_size=4)

    def padded_tokens(trainer):
        return sum(b["input_ids"].numel() for b in trainer.get_train_dataloader())

    from transformers.trainer_pt_utils import LengthGroupedSampler

    assert isinstance(grouped._get_train_sampler(), LengthGroupedSampler)
    assert sorted(i for i in grouped._get_train_sampler()) == list(range(200))  # every pair once
    assert padded_tokens(grouped) < 0.8 * padded_tokens(plain)


def test_scoring_only_completion_positions_gives_the_same_loss_and_gradients(tmp_path):
    """The CPU speed-up (TRL's compact LM-head path) changes no number: loss and LoRA gradients equal TRL's
    all-positions path."""
    import trl.trainer.utils as trl_utils

    from dpo_recipes.train.lm_head import score_completion_tokens_only

    score_completion_tokens_only()
    patched = trl_utils._use_triton
    trainer = make(tmp_path, peft=True, loss_hook=None)
    batch = first_batch(trainer)
    loss_compact, grads_compact = loss_and_grads(trainer, batch)
    trl_utils._use_triton = lambda device: False  # TRL's own CPU path: every position projected
    try:
        loss_full, grads_full = loss_and_grads(trainer, batch)
    finally:
        trl_utils._use_triton = patched
    assert torch.allclose(loss_compact, loss_full, atol=1e-6)
    assert grads_compact.keys() == grads_full.keys() and grads_compact
    assert all(torch.allclose(grads_compact[k], grads_full[k], atol=1e-6) for k in grads_compact)


def test_a_nan_loss_stops_the_run_naming_the_step_and_leaves_no_poisoned_checkpoint(tmp_path, monkeypatch):
    trainer = make(tmp_path, peft=True, max_steps=3, save_strategy="steps", save_steps=1, optim="sgd")
    calls = {"n": 0}
    original = RecipeDPOTrainer.compute_loss

    def nan_at_second_step(self, *args, **kwargs):
        calls["n"] += 1
        loss = original(self, *args, **kwargs)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(RecipeDPOTrainer, "compute_loss", nan_at_second_step)
    with pytest.raises(DPORecipesError, match=r"^Step 2: non-finite loss nan and gradient norm nan .*The update was skipped"):
        trainer.train()
    out = tmp_path / "out"
    assert (out / "checkpoint-1").is_dir() and not (out / "checkpoint-2").exists()
    from safetensors.torch import load_file

    saved = load_file(out / "checkpoint-1" / "adapter_model.safetensors")
    assert all(torch.isfinite(t).all() for t in saved.values())
    live = {n: p for n, p in trainer.model.named_parameters() if "lora_" in n}
    assert all(torch.isfinite(p).all() for p in live.values())  # the NaN step's update was never applied
