"""The per-pair reference cache: the same loss as TRL's per-step reference, no reference forward for known pairs in
a later run, keys that change with what changes the reference's log-probs (and only with that), safe files."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from trl.trainer.dpo_trainer import DataCollatorForPreference

from dpo_recipes.train import reference_cache as rc
from dpo_recipes.train.reference_cache import ReferenceCache, pair_keys, reference_key, trained_adapter
from test_trainer import make, pairs, tiny_model, tiny_tokenizer


def collate(examples, max_length=None):
    return DataCollatorForPreference(pad_token_id=0, max_length=max_length)(examples)


PAIR = {"prompt_ids": [5, 6, 7], "chosen_ids": [8, 9], "rejected_ids": [10]}


def test_pair_keys_follow_the_tokens_and_the_completion_boundary_not_the_padding():
    other = {"prompt_ids": [1, 2, 3, 4, 5, 6, 7, 8], "chosen_ids": [9], "rejected_ids": [9, 9]}
    alone = pair_keys(**{k: v for k, v in collate([PAIR]).items() if k != "ref_chosen_logps"})
    padded = pair_keys(**collate([PAIR, other]))
    assert alone[0] == padded[0] and padded[0] != padded[1]
    moved = {"prompt_ids": [5, 6], "chosen_ids": [7, 8, 9], "rejected_ids": [7, 10]}  # same tokens, other prompt
    assert pair_keys(**collate([moved]))[0] != alone[0]
    assert pair_keys(**collate([PAIR], max_length=4))[0] != alone[0]  # truncation changes what is scored


def test_reference_key_covers_base_weights_and_precision_not_the_adapter():
    tok = tiny_tokenizer()
    base = tiny_model(tok)
    key = reference_key(base, precision="float32", ld_alpha=None)
    torch.manual_seed(1)
    lora = get_peft_model(tiny_model(tok), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(2)
    lora_other = get_peft_model(tiny_model(tok), LoraConfig(r=8, target_modules=["q_proj", "k_proj", "o_proj"]))
    assert reference_key(lora, leave_out=trained_adapter(lora), precision="float32", ld_alpha=None) == key
    assert reference_key(lora_other, leave_out=trained_adapter(lora_other), precision="float32", ld_alpha=None) == key
    assert reference_key(base, precision="bf16", ld_alpha=None) != key
    assert reference_key(base, precision="float32", ld_alpha=0.5) != key
    assert reference_key(tiny_model(tok, seed=3), precision="float32", ld_alpha=None) != key
    # A reference that is the adapter model itself (a retrained adapter) keys on its adapter weights too
    assert reference_key(lora, precision="float32", ld_alpha=None) != reference_key(
        lora_other, precision="float32", ld_alpha=None)


def loss_and_grads(trainer):
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    trainer.model.train()
    trainer.model.zero_grad()
    with trainer.accelerator.autocast():  # as in training_step (TRL's reference forward enters it itself)
        loss = trainer.compute_loss(trainer.model, dict(batch))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("setup", [dict(peft=True), dict(peft=True, loss_hook="rdpo"), dict()])
def test_cached_reference_gives_trl_loss_and_a_second_run_skips_the_reference_forward(tmp_path, monkeypatch, setup):
    cache = str(tmp_path / "cache")
    plain_loss, plain_grads = loss_and_grads(make(tmp_path / "plain", **setup))
    first = make(tmp_path / "first", reference_cache=cache, **setup)
    loss, grads = loss_and_grads(first)
    assert first.reference_cache.misses == 4 and first.reference_cache.hits == 0
    torch.testing.assert_close(loss, plain_loss, rtol=1e-6, atol=1e-6)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)
    assert first.reference_cache.save() is not None

    second = make(tmp_path / "second", reference_cache=cache, **setup)

    def no_reference_forward(*args, **kwargs):
        raise AssertionError("the reference forward ran for cached pairs")

    monkeypatch.setattr(second, "compute_ref_log_probs", no_reference_forward)
    cached_loss, cached_grads = loss_and_grads(second)
    assert second.reference_cache.hits == 4
    assert torch.equal(cached_loss, loss)
    for name, grad in grads.items():
        assert torch.equal(cached_grads[name], grad), name


def test_training_saves_the_cache_and_a_rerun_hits_it(tmp_path):
    cache = tmp_path / "cache"
    first = make(tmp_path / "a", peft=True, reference_cache=str(cache))
    first.train()
    shards = list(cache.glob("*/*.safetensors"))
    assert len(shards) == 1 and not list(cache.glob("*/*.tmp"))
    second = make(tmp_path / "b", peft=True, reference_cache=str(cache))
    second.train()
    assert second.reference_cache.misses == 0 and second.reference_cache.hits == 8
    losses = [[h["loss"] for h in t.state.log_history if "loss" in h] for t in (first, second)]
    assert losses[0] == losses[1]
    longer = make(tmp_path / "c", peft=True, reference_cache=str(cache), max_length=12)  # other truncation: misses
    longer.train()
    assert longer.reference_cache.hits == 0


def test_a_damaged_shard_is_recomputed_not_trusted(tmp_path):
    cache = ReferenceCache(tmp_path, "k")
    keys = [b"a" * 32, b"b" * 32]
    cache.store(keys, torch.tensor([-1.5, -2.5]), torch.tensor([-3.0, -4.0]))
    cache.save()
    (tmp_path / "k" / "broken.safetensors").write_bytes(b"not a safetensors file")
    reread = ReferenceCache(tmp_path, "k")
    chosen, rejected, _ = reread.lookup(keys)
    assert chosen.tolist() == [-1.5, -2.5] and rejected.tolist() == [-3.0, -4.0]
    assert reread.lookup([b"c" * 32]) is None


def test_many_shards_are_merged_into_one(tmp_path, monkeypatch):
    monkeypatch.setattr(rc, "MAX_SHARDS", 3)
    for i in range(5):
        cache = ReferenceCache(tmp_path, "k")
        cache.store([bytes([i]) * 32], torch.tensor([float(-i)]), torch.tensor([float(-i - 1)]))
        cache.save()
    assert len(list((tmp_path / "k").glob("*.safetensors"))) <= 3
    assert len(ReferenceCache(tmp_path, "k").values) == 5


def test_anchor_per_token_values_survive_save_merge_and_reload_and_are_required_when_asked(tmp_path, monkeypatch):
    monkeypatch.setattr(rc, "MAX_SHARDS", 2)
    tokens = {}
    for i in range(3):
        key = bytes([i]) * 32
        tokens[key] = torch.arange(i + 1, dtype=torch.float32) - 10.0 * i  # lengths 1, 2, 3
        cache = ReferenceCache(tmp_path, "k")
        cache.store([key], torch.tensor([float(-i)]), torch.tensor([-1.0]), {key: tokens[key]})
        cache.save()
    nan_key = b"n" * 32
    cache = ReferenceCache(tmp_path, "k")
    cache.store([nan_key], torch.tensor([-1.0]), torch.tensor([-2.0]), {nan_key: torch.tensor([0.0, float("nan")])})
    cache.save()
    reread = ReferenceCache(tmp_path, "k")
    assert len(list((tmp_path / "k").glob("*.safetensors"))) <= 2  # merged, per-token values included
    assert reread.tokens.keys() == tokens.keys()  # the NaN values were not kept; their totals were
    for key, values in tokens.items():
        assert torch.equal(reread.tokens[key], values)
    _, _, found = reread.lookup(list(tokens), [bytes([2]) * 32])
    assert torch.equal(found[0], tokens[bytes([2]) * 32])
    assert reread.lookup([nan_key]) is not None and reread.lookup([nan_key], [nan_key]) is None


def test_no_cache_where_trl_precomputes_anyway(tmp_path):
    trainer = make(tmp_path, peft=True, precompute_ref_log_probs=True, reference_cache=str(tmp_path / "c"),
                   dataset=pairs(4))
    assert trainer.reference_cache is None


def test_non_finite_reference_values_are_not_kept(tmp_path):
    cache = ReferenceCache(tmp_path, "k")
    cache.store([b"a" * 32, b"b" * 32], torch.tensor([float("nan"), -1.0]), torch.tensor([-2.0, -3.0]))
    assert list(cache.values) == [b"b" * 32]


def test_no_cache_for_a_reference_that_changes_or_a_config_that_differs(tmp_path):
    trainer = make(tmp_path / "sync", sync_ref_model=True, reference_cache=str(tmp_path / "c"), dataset=pairs(4))
    assert trainer.reference_cache is None
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    key = reference_key(model, precision="float32", ld_alpha=None)
    model.config.rope_parameters = {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}
    assert reference_key(model, precision="float32", ld_alpha=None) != key


def test_an_unwritable_cache_costs_a_warning_not_the_run(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cache = ReferenceCache(blocker / "cache", "k")  # a folder under a file can never be created
    cache.store([b"a" * 32], torch.tensor([-1.0]), torch.tensor([-2.0]))
    assert cache.save() is None
    assert "not written" in caplog.text


def test_the_reference_adapter_is_read_from_peft_not_assumed_by_name():
    # A frozen adapter next to the trained one (TRL keeps a pretrained adapter's copy as the reference; 1.16 calls it
    # "ref") is part of the reference whatever its name: its weights are in the key, the trained adapter's are not.
    tok = tiny_tokenizer()
    base = tiny_model(tok)
    base_key = reference_key(base, precision="float32", ld_alpha=None)
    torch.manual_seed(1)
    model = get_peft_model(tiny_model(tok), LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    model.add_adapter("frozen_copy_any_name", LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    model.set_adapter("default")
    leave_out = trained_adapter(model)
    assert leave_out and all(".default." in name for name in leave_out)
    assert not any("frozen_copy_any_name" in name for name in leave_out)
    with_copy = reference_key(model, leave_out=leave_out, precision="float32", ld_alpha=None)
    assert with_copy != base_key
    with torch.no_grad():  # training the active adapter does not move the key; changing the frozen copy does
        next(p for n, p in model.named_parameters() if ".default." in n).add_(1.0)
        assert reference_key(model, leave_out=leave_out, precision="float32", ld_alpha=None) == with_copy
        next(p for n, p in model.named_parameters() if "frozen_copy_any_name" in n).add_(1.0)
    assert reference_key(model, leave_out=leave_out, precision="float32", ld_alpha=None) != with_copy
    model.base_model.model.model.norm.weight.requires_grad_(True)  # a base tensor trains too: the reference drifts
    assert trained_adapter(model) is None
