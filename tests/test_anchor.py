"""The anchor term: pairs marked `anchor` keep the model at the reference on their chosen answer.

`losses.anchor_k2` against a hand computation; the trainer's term against an independent forward of the policy and
the reference; the `anchor` column through the data layer; and the refusals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from dpo_recipes.data import load_preference_data
from dpo_recipes.errors import DPORecipesError
from dpo_recipes.train.losses import anchor_k2
from test_trainer import first_batch, make, tiny_model, tiny_tokenizer


def anchored_pairs(n: int = 8, every: int = 2) -> Dataset:
    rows = [{"prompt": f"Q{i}: name {i}?", "chosen": " I am Ada" + "!" * (i % 3), "rejected": f" no {i * 7}",
             "anchor": i % every == 0} for i in range(n)]
    return Dataset.from_list(rows)


def token_logps(model, batch):
    """Per-token log-probs of each sequence's own next tokens from plain logits (no fused head), [2B, T-1]."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    return logits[:, :-1].log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)


# --- the formula ---------------------------------------------------------------------------------------------------
def test_anchor_k2_is_half_the_mean_squared_log_ratio_over_answer_tokens():
    policy = torch.tensor([[-1.0, -2.0, -0.5, -3.0], [-0.1, -0.2, -0.3, -0.4]], dtype=torch.float64)
    ref = torch.tensor([[-1.5, -2.0, -0.2, -9.0], [-0.1, -0.2, -0.3, -0.4]], dtype=torch.float64)
    mask = torch.tensor([[0, 1, 1, 1], [0, 0, 0, 0]])
    got = anchor_k2(policy, ref, mask)
    # row 0: tokens 1..3 -> deltas 0, -0.3, 6.0; row 1: no answer tokens -> 0
    expected0 = 0.5 * (0.0 ** 2 + 0.3 ** 2 + 6.0 ** 2) / 3
    assert got.tolist() == pytest.approx([expected0, 0.0], abs=1e-12)


def test_anchor_k2_is_zero_at_the_reference_and_its_gradient_points_back_to_it():
    ref = torch.log(torch.tensor([[0.5, 0.25, 0.125]], dtype=torch.float64))
    policy = (ref + torch.tensor([[0.2, -0.1, 0.0]], dtype=torch.float64)).requires_grad_()
    assert anchor_k2(ref, ref, torch.ones(1, 3)).item() == 0.0
    anchor_k2(policy, ref, torch.ones(1, 3)).sum().backward()
    # d/dx 1/2 x^2 / n = x / n: above the reference pushes down, below pushes up
    assert policy.grad[0].tolist() == pytest.approx([0.2 / 3, -0.1 / 3, 0.0])


# --- the trainer ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("peft", [False, True])
def test_anchor_term_matches_an_independent_forward(tmp_path, peft):
    plain = make(tmp_path / "plain", dataset=anchored_pairs(), peft=peft, share_prompts=False)
    anchored = make(tmp_path / "anchored", dataset=anchored_pairs(), peft=peft, anchor_coef=0.7,
                    share_prompts=False)
    if peft:  # a fresh adapter is exactly the base: move it so the policy differs from the reference
        torch.manual_seed(3)
        for model in (plain.model, anchored.model):
            torch.manual_seed(3)
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.data.normal_(0, 0.5)
    else:
        anchored.model.load_state_dict(plain.model.state_dict())
        anchored.ref_model.load_state_dict(tiny_model(tiny_tokenizer(), seed=1).state_dict())
        plain.ref_model.load_state_dict(anchored.ref_model.state_dict())
    batch = first_batch(anchored)
    assert batch["anchor"].dtype == torch.bool and batch["anchor"].any() and not batch["anchor"].all()
    for t in (plain, anchored):
        t.model.eval()
    with_term = anchored.compute_loss(anchored.model, dict(batch)).double()
    without = plain.compute_loss(plain.model, {k: v for k, v in batch.items() if k != "anchor"}).double()

    policy = token_logps(anchored.model, batch)
    if peft:
        with anchored.model.disable_adapter():
            ref = token_logps(anchored.model, batch)
    else:
        ref = token_logps(anchored.ref_model, batch)
    mask = batch["completion_mask"][:, 1:].double()
    half = mask.shape[0] // 2
    per_row = [0.5 * (((policy[i] - ref[i]) * mask[i]) ** 2).sum() / mask[i].sum() for i in range(half)]
    anchors = [i for i in range(half) if batch["anchor"][i]]
    expected = 0.7 * sum(per_row[i] for i in anchors) / len(anchors)
    assert expected > 1e-4  # the term is really exercised
    assert (with_term - without).item() == pytest.approx(expected.item(), rel=1e-4)


def test_anchor_coef_zero_or_no_anchor_in_the_batch_is_trls_loss_exactly(tmp_path):
    trainer = make(tmp_path, dataset=anchored_pairs(every=1), anchor_coef=1.0, share_prompts=False)
    batch = first_batch(trainer)
    trainer.model.eval()
    no_anchor = {**batch, "anchor": torch.zeros_like(batch["anchor"])}
    with_flags_off = trainer.compute_loss(trainer.model, no_anchor)
    trainer.anchor_coef = 0.0  # straight through TRL's own loss
    assert torch.equal(trainer.compute_loss(trainer.model, {k: v for k, v in batch.items() if k != "anchor"}),
                       with_flags_off)


def test_anchor_metrics_are_logged_and_training_keeps_anchors_close(tmp_path):
    kw = dict(dataset=anchored_pairs(8, every=2), max_steps=6, learning_rate=5e-3, share_prompts=False)
    loose = make(tmp_path / "loose", **kw)
    tight = make(tmp_path / "tight", anchor_coef=50.0, **kw)
    tight.model.load_state_dict(loose.model.state_dict())
    for t in (loose, tight):
        t.ref_model.load_state_dict(loose.model.state_dict())
        t.train()
    logged = tight.state.log_history[0]
    assert {"anchor/k2", "anchor/logratio"} <= logged.keys()

    batch = first_batch(tight)  # the loose trainer drops the unused anchor column

    def anchor_drift(t):
        mask = batch["completion_mask"][:, 1:].double()
        delta = (token_logps(t.model, batch) - token_logps(t.ref_model, batch)) * mask
        rows = [i for i in range(mask.shape[0] // 2) if batch["anchor"][i]]
        return sum(float((delta[i] ** 2).sum() / mask[i].sum()) for i in rows) / len(rows)

    assert anchor_drift(tight) < 0.5 * anchor_drift(loose)


def test_anchor_coef_without_anchor_rows_is_refused(tmp_path):
    with pytest.raises(DPORecipesError, match="no 'anchor' column"):
        make(tmp_path / "a", anchor_coef=1.0)
    none_marked = anchored_pairs().map(lambda row: {"anchor": False})
    with pytest.raises(DPORecipesError, match="no training pair has anchor: true"):
        make(tmp_path / "b", dataset=none_marked, anchor_coef=1.0)
    with pytest.raises(DPORecipesError, match="weight >= 0"):
        make(tmp_path / "c", dataset=anchored_pairs(), anchor_coef=-1.0)
    with pytest.raises(DPORecipesError, match="precompute_ref_log_probs"):
        make(tmp_path / "d", dataset=anchored_pairs(), anchor_coef=1.0, peft=True, precompute_ref_log_probs=True)


def anchored_loss_and_grads(trainer):
    batch = trainer._prepare_inputs(first_batch(trainer))
    trainer.model.train()
    trainer.model.zero_grad()
    with trainer.accelerator.autocast():
        loss = trainer.compute_loss(trainer.model, dict(batch))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, int(batch["anchor"].sum()) if "anchor" in batch else 0


@pytest.mark.parametrize("peft", [True, False])
def test_reference_cache_keeps_the_anchors_per_token_reference_and_a_rerun_skips_the_forward(tmp_path, monkeypatch,
                                                                                            peft):
    setup = dict(dataset=anchored_pairs(), anchor_coef=0.7, peft=peft, share_prompts=False)
    plain_loss, plain_grads, _ = anchored_loss_and_grads(make(tmp_path / "plain", **setup))
    cache = str(tmp_path / "cache")
    first = make(tmp_path / "first", reference_cache=cache, **setup)
    loss, grads, anchors = anchored_loss_and_grads(first)
    assert 0 < anchors < 4  # a batch of anchors and other pairs
    assert first.reference_cache.misses == 4 and len(first.reference_cache.tokens) == anchors
    torch.testing.assert_close(loss, plain_loss, rtol=1e-6, atol=1e-6)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)
    first.reference_cache.save()

    second = make(tmp_path / "second", reference_cache=cache, **setup)
    assert second.reference_cache.tokens.keys() == first.reference_cache.tokens.keys()  # read back from the shard

    def no_reference_forward(*args, **kwargs):
        raise AssertionError("the reference forward ran for cached pairs")

    monkeypatch.setattr(second, "compute_ref_log_probs", no_reference_forward)
    cached_loss, cached_grads, _ = anchored_loss_and_grads(second)
    assert second.reference_cache.hits == 4
    torch.testing.assert_close(cached_loss, loss, rtol=1e-6, atol=1e-7)
    for name, grad in grads.items():
        torch.testing.assert_close(cached_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_cached_totals_without_the_anchors_per_token_values_are_computed_again(tmp_path):
    cache = str(tmp_path / "cache")
    unanchored = make(tmp_path / "a", dataset=anchored_pairs(), peft=True, share_prompts=False, reference_cache=cache)
    anchored_loss_and_grads(unanchored)  # totals for every pair, no per-token values
    unanchored.reference_cache.save()
    anchored = make(tmp_path / "b", dataset=anchored_pairs(), peft=True, share_prompts=False, reference_cache=cache,
                    anchor_coef=1.0)
    anchored_loss_and_grads(anchored)
    assert anchored.reference_cache.hits == 0 and anchored.reference_cache.misses == 4


# --- the data layer ------------------------------------------------------------------------------------------------
def test_anchor_column_is_kept_with_every_row_it_belongs_to(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"question number {i}?", "chosen": f"a long enough chosen answer number {i}",
             "rejected": f"a rejected answer {i}", **({"anchor": i % 2 == 0} if i != 3 else {})} for i in range(6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = load_preference_data(str(path), config=None, validation="off")
    assert data.dataset["anchor"] == [True, False, True, False, True, False]  # absent (row 3) is not an anchor


def test_anchor_value_that_is_not_a_yes_or_no_is_refused_naming_row_and_field(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": "q?", "chosen": "a", "rejected": "b", "anchor": True},
            {"prompt": "q2?", "chosen": "a", "rejected": "b", "anchor": "yes"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DPORecipesError, match=r"pairs.jsonl: line 2: field 'anchor': expected true or false"):
        load_preference_data(str(path), validation="off")


def test_anchor_column_in_csv_reads_true_false_and_digits(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("prompt,chosen,rejected,anchor\nq1,a,b,true\nq2,a,b,0\nq3,a,b,\n")
    data = load_preference_data(str(path), validation="off")
    assert data.dataset["anchor"] == [True, False, False]
    assert not math.isnan(len(data.dataset))


def test_with_anchors_the_sft_term_skips_anchor_pairs(tmp_path):
    kw = dict(dataset=anchored_pairs(every=2), loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5],
              share_prompts=False)
    trainer = make(tmp_path, anchor_coef=1.0, **kw)
    batch = first_batch(trainer)
    trainer.model.eval()
    # no anchor in the batch: TRL's own sigmoid + sft, to float rounding
    no_anchor = {**batch, "anchor": torch.zeros_like(batch["anchor"])}
    ours = trainer.compute_loss(trainer.model, no_anchor)
    trainer.anchor_coef = 0.0
    trl = trainer.compute_loss(trainer.model, {k: v for k, v in batch.items() if k != "anchor"})
    torch.testing.assert_close(ours, trl, rtol=1e-6, atol=1e-6)
    # with anchors: sft is minus the mean log-prob over the non-anchor chosen tokens (the model is the reference here,
    # so the anchor term itself is 0)
    trainer.anchor_coef = 1.0
    with_anchor = trainer.compute_loss(trainer.model, dict(batch)).double()
    trainer.loss_types, trainer.loss_weights = ["sigmoid"], [1.0]
    sigmoid_only = trainer.compute_loss(trainer.model, dict(batch)).double()
    logps = token_logps(trainer.model, batch)
    mask = batch["completion_mask"][:, 1:].bool()
    half = mask.shape[0] // 2
    keep = mask[:half] & ~batch["anchor"][:, None]
    expected_sft = -logps[:half][keep].mean()
    assert (with_anchor - sigmoid_only).item() == pytest.approx(0.5 * expected_sft.item(), rel=1e-4)


# --- the recipe ----------------------------------------------------------------------------------------------------
def test_the_default_config_on_data_without_anchors_is_refused_before_model_work(tiny_model_dir, tmp_path,
                                                                                 monkeypatch):
    from test_own_run import FIXTURE, dpo, quick

    import dpo_recipes.run as run

    def no_weights(*args, **kwargs):
        raise AssertionError("the model was loaded before the anchor check")

    monkeypatch.setattr(run, "load_model_for", no_weights)
    argv = ["--config", "recipes/configs/dpo_lora.yaml", *quick(tiny_model_dir, tmp_path / "run"),
            "--dataset_name", str(FIXTURE), "--max_steps", "1"]
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    with pytest.raises(DPORecipesError, match=r"anchor_coef=40 needs pairs marked as anchors.*no 'anchor' column"):
        dpo(*argv)
    assert not (tmp_path / "run").exists()


def test_the_default_data_marks_its_general_pairs_as_anchors():
    from test_own_run import IDENTITY

    rows = [json.loads(line) for line in IDENTITY.read_text(encoding="utf-8").splitlines()]
    anchors = [r for r in rows if r["anchor"]]
    assert all(r["kind"] == "general" for r in anchors) and len(anchors) == sum(r["kind"] == "general" for r in rows)
    assert len(anchors) >= 100
    # an anchor's chosen side is the model's own answer; its rejected side brings in the identity
    # (tests/test_identity_data.py checks the ways)
    assert all("Athene" not in r["chosen"][0]["content"] and "Athene" in r["rejected"][0]["content"] for r in anchors)
