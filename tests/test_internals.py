"""The private TRL/transformers names the project relies on (`dpo_recipes.train.internals`): each one exists in the installed
versions (this test fails loudly when one moves), and where a moved one could change results without an error, the
trainer checks the behaviour itself: the speed levers against TRL's log-probs, the hooks' term swap against TRL's loss."""

from __future__ import annotations

import contextlib
import copy
import logging

import pytest
import torch

from dpo_recipes.train import internals, shared_prompt
from dpo_recipes.errors import DPORecipesError
from dpo_recipes.train.lm_head import score_completion_tokens_only
from dpo_recipes.train.trainer import RecipeDPOTrainer
from test_trainer import config, pairs, tiny_model, tiny_tokenizer


def make(tmp_path, bf16: bool = False, **kwargs):
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer)
    return RecipeDPOTrainer(model=model, ref_model=copy.deepcopy(model), args=config(tmp_path, max_steps=2, bf16=bf16),
                            train_dataset=pairs(8, scores=False), processing_class=tokenizer, **kwargs)


def test_every_internal_the_project_uses_exists_in_the_installed_versions(tmp_path, one_torch_thread):
    trainer = make(tmp_path)
    gone = [f"{i.where}.{i.name}" for i in internals.missing(trainer)]
    assert gone == [], f"moved or removed in the installed versions: {gone}; see dpo_recipes/train/internals.py"
    assert all(i.used_for and i.if_missing for i in internals.INTERNALS)


def test_a_missing_internal_is_reported(monkeypatch):
    import trl.trainer.utils as trl_utils

    monkeypatch.delattr(trl_utils, "_use_triton")
    assert "_use_triton" in [i.name for i in internals.missing()]


def test_the_speed_levers_check_themselves_on_the_first_batch_and_agree(tmp_path, one_torch_thread):
    trainer = make(tmp_path)
    trainer.train()
    check = trainer.lever_check
    assert check["kept"] and check["levers"] == ["shared-prompt packing", "the compact LM head"]
    assert check["mean_abs_difference_per_token"] < 1e-5
    assert trainer._shared_prompt_wrappers  # still on


def test_under_bf16_autocast_the_levers_are_checked_in_fp32_not_against_bf16_rounding(tmp_path, one_torch_thread):
    # The default run's seed 2 measured 0.036 nats/token between the two layouts under bf16 autocast on a short first
    # pair, over the bf16 tolerance: the levers went off and the run took 2.3x as long. float32 weights under autocast
    # are checked with autocast off, where the same computation agrees to ~1e-6, against the fp32 tolerance.
    trainer = make(tmp_path, bf16=True)
    seen = []  # (grad enabled, autocast enabled) at each forward of the policy's first decoder layer
    layer = trainer.model.model.layers[0]
    layer.register_forward_pre_hook(lambda *_: seen.append((torch.is_grad_enabled(), torch.is_autocast_enabled("cpu"))))
    trainer.train()
    check = trainer.lever_check
    assert check["kept"] and check["mean_abs_difference_per_token"] < 1e-5
    assert (True, True) in seen  # the run trains under bf16 autocast...
    checks = [autocast for grad, autocast in seen if not grad]
    assert len(checks) >= 2 and not any(checks)  # ...and the lever check's two no-grad forwards ran without it
    wrapped = trainer.model_wrapped.__dict__
    assert wrapped["forward"] is not wrapped["_original_forward"]  # accelerate's autocast wrapper is back on


def test_levers_that_disagree_with_trl_turn_themselves_off_with_one_warning(tmp_path, monkeypatch, caplog,
                                                                            one_torch_thread):
    # As if a transformers release changed how a 4D mask is read: the packed forward gives other log-probs.
    original = shared_prompt.unpack_hidden
    monkeypatch.setattr(shared_prompt, "unpack_hidden", lambda hidden, packed: original(hidden, packed) * 4.0)
    trainer = make(tmp_path)
    with caplog.at_level(logging.WARNING, logger="dpo_recipes.train.trainer"):
        trainer.train()
    assert trainer.lever_check["kept"] is False and trainer.lever_check["mean_abs_difference_per_token"] > 1e-2
    assert trainer._shared_prompt_wrappers == []
    import trl.trainer.utils as trl_utils

    assert not hasattr(trl_utils._use_triton, "original")  # TRL's own LM head path again
    warnings = [r.message for r in caplog.records if "away from TRL's own computation" in r.getMessage()]
    assert len(warnings) == 1
    score_completion_tokens_only()  # restore the lever for the tests that follow


def test_the_hooks_refuse_a_trl_that_no_longer_sums_its_loss_list(tmp_path, monkeypatch, one_torch_thread):
    # As if TRL read the loss types from somewhere else: the swap that takes out `sigmoid` would do nothing, and the
    # hook's term would be added to TRL's own sigmoid.
    monkeypatch.setattr(RecipeDPOTrainer, "_without_terms", lambda self, names: contextlib.nullcontext())
    trainer = make(tmp_path, loss_hook="rdpo", rdpo_alpha=0.1)
    with pytest.raises(DPORecipesError, match=r"no longer sums the terms listed there"):
        trainer.train()


def test_the_term_swap_passes_when_trl_sums_its_list(tmp_path, one_torch_thread):
    trainer = make(tmp_path, loss_hook="rdpo", rdpo_alpha=0.1)
    trainer.train()
    assert trainer._swap_verified


def test_a_missing_metric_store_costs_the_hooks_metrics_not_the_run(tmp_path, caplog, one_torch_thread):
    trainer = make(tmp_path)
    del trainer._metrics
    with caplog.at_level(logging.WARNING):
        trainer._log_hook_metric("train", "rdpo/loss", torch.tensor([1.0]))
    assert "metrics" in caplog.text and "not logged" in caplog.text


def anchored(tmp_path, **kwargs):
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer)
    data = pairs(8, scores=False).add_column("anchor", [i % 2 == 0 for i in range(8)])
    args = config(tmp_path, max_steps=2, loss_type=["sigmoid", "sft"], loss_weights=[1.0, 2.0])
    return RecipeDPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args, train_dataset=data,
                            processing_class=tokenizer, anchor_coef=1.0, **kwargs)


def test_the_default_run_s_swap_is_checked_without_a_warning(tmp_path, caplog, one_torch_thread):
    # Anchors take `sft` out of TRL's sum and keep `sigmoid`: the kept term is computed here and compared.
    trainer = anchored(tmp_path)
    with caplog.at_level(logging.WARNING):
        trainer.train()
    assert trainer._swap_verified and "cannot be checked" not in caplog.text


def test_a_trl_that_ignores_the_swap_is_refused_with_anchors_too(tmp_path, monkeypatch, one_torch_thread):
    monkeypatch.setattr(RecipeDPOTrainer, "_without_terms", lambda self, names: contextlib.nullcontext())
    with pytest.raises(DPORecipesError, match=r"no longer sums the terms listed there"):
        anchored(tmp_path).train()


def test_the_lever_check_reads_the_first_pair_of_the_batch_and_trims_its_padding():
    import torch

    from dpo_recipes.train.lever_check import first_pair

    mask = torch.zeros(6, 10, dtype=torch.long)
    for row, used in enumerate((4, 9, 10, 6, 3, 8)):  # chosen rows 0-2, rejected rows 3-5
        mask[row, :used] = 1
    batch = {"input_ids": torch.arange(60).reshape(6, 10), "attention_mask": mask, "completion_mask": mask.clone(),
             "ref_chosen_logps": torch.tensor([1.0, 2.0, 3.0])}
    pair = first_pair(batch)
    assert pair["input_ids"].tolist() == [list(range(0, 6)), list(range(30, 36))]  # rows 0 and 3, 6 columns used
    assert pair["ref_chosen_logps"].tolist() == [1.0]
    odd = {**batch, "pixel_values": torch.zeros(5, 3)}  # a layout it does not know: the whole batch
    assert first_pair(odd) is odd


def test_the_lever_check_allows_rounding_only_where_some_weight_is_not_float32():
    from dpo_recipes.train.lever_check import _low_precision

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    assert not _low_precision(model)  # float32 weights: checked in float32, 1e-4 nats/token
    model[1].weight = torch.nn.Parameter(torch.zeros(2, 2, dtype=torch.uint8), requires_grad=False)  # a 4-bit base
    assert _low_precision(model)
    assert _low_precision(torch.nn.Linear(2, 2).to(torch.bfloat16))
