"""The shared-prompt forward: each pair's prompt runs once, and log-probs, loss and gradients equal TRL's two-row
forward to float rounding, for sdpa and eager attention, LoRA and full models, with gradient checkpointing and a
precomputed reference; batches and models it cannot pack run unchanged."""

from __future__ import annotations

import pytest
import torch
from trl.trainer.dpo_trainer import DataCollatorForPreference
from trl.trainer.utils import add_fused_lm_head

from dpo_recipes.train.shared_prompt import install, pack_pairs, shared_prompts, unpack_hidden, unsupported_reason
from test_trainer import make, pairs, tiny_model, tiny_tokenizer

EXAMPLES = [  # prompts of different lengths; answers that start alike, differ at once, or are prefixes of each other
    {"prompt_ids": [5, 6, 7, 8, 9], "chosen_ids": [10, 11, 12], "rejected_ids": [10, 13]},
    {"prompt_ids": [5, 6], "chosen_ids": [20, 21, 22, 23, 24, 25], "rejected_ids": [30]},
    {"prompt_ids": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], "chosen_ids": [12], "rejected_ids": [12, 13, 14]},
]

SHARING_A_ROW = [  # one long pair; three short ones that fit side by side in its length (7 + 8 + 6 <= 22 tokens)
    {"prompt_ids": list(range(1, 11)), "chosen_ids": [11, 12, 13, 14, 15, 16], "rejected_ids": [17, 18, 19, 20, 21, 22]},
    {"prompt_ids": [3, 4, 5], "chosen_ids": [6, 7], "rejected_ids": [8, 9]},
    {"prompt_ids": [3, 4, 5, 6], "chosen_ids": [7, 8, 9], "rejected_ids": [10]},
    {"prompt_ids": [2, 3], "chosen_ids": [4, 5], "rejected_ids": [4, 6, 7]},
]


def batch(examples=EXAMPLES, **collator):
    return DataCollatorForPreference(pad_token_id=0, **collator)(examples)


def test_pack_pairs_shares_the_common_prefix_and_restarts_the_rejected_positions():
    b = batch()
    packed = pack_pairs(b["input_ids"], b["attention_mask"])
    # Pair 0: shared [5..9, 10] (the answers both start with 10), chosen tail [11, 12], rejected tail [13].
    assert packed.input_ids[0, :9].tolist() == [5, 6, 7, 8, 9, 10, 11, 12, 13]
    assert packed.position_ids[0, :9].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 6]
    visible = packed.attention_mask[0, 0]
    assert visible[8, :6].all() and not visible[8, 6:8].any() and visible[8, 8]  # rejected sees prompt, not chosen
    assert visible[7, :8].all() and not visible[7, 8]                            # chosen is plainly causal
    # Pair 2: the chosen answer is a prefix of the rejected one: nothing of its own, all shared.
    assert packed.input_ids[2].tolist() == list(range(1, 15))
    assert packed.position_ids[2].tolist() == list(range(14))
    # Back in TRL's layout: every real token of every row reads its own packed position.
    hidden = packed.input_ids[..., None].float()
    rows = unpack_hidden(hidden, packed)[..., 0].long()
    real = b["attention_mask"].bool()
    assert torch.equal(rows[real], b["input_ids"][real])


def test_short_pairs_share_a_row_without_seeing_each_other():
    from dpo_recipes.train.shared_prompt import share_rows

    b = batch(SHARING_A_ROW)
    packed = pack_pairs(b["input_ids"], b["attention_mask"])
    assert share_rows([22, 7, 8, 6], 22) == [[0], [1, 2, 3]]
    assert packed.input_ids.shape == (2, 22)  # 2 rows of 22 positions where one pair a row ran 4 x 22
    assert packed.input_ids[1].tolist() == [3, 4, 5, 6, 7, 8, 9, 3, 4, 5, 6, 7, 8, 9, 10, 2, 3, 4, 5, 6, 7, 1]
    assert packed.position_ids[1].tolist() == [0, 1, 2, 3, 4, 3, 4, 0, 1, 2, 3, 4, 5, 6, 4, 0, 1, 2, 3, 3, 4, 0]
    visible = packed.attention_mask[1, 0]
    assert not visible[7:, :7].any() and not visible[:7, 7:].any()     # pair 2 sees nothing of pair 1, and back
    assert not visible[15:, :15].any()                                 # pair 3 sees neither
    assert visible[14, 7:11].all() and not visible[14, 11:14].any()    # pair 2's rejected tail: prompt, not chosen
    assert visible[20, 15:18].all() and not visible[20, 18] and visible[20, 19]  # pair 3: shared [2, 3, 4], chosen [5]
    assert visible[21].tolist() == [False] * 21 + [True]              # padding sees itself only
    hidden = packed.input_ids[..., None].float()
    rows = unpack_hidden(hidden, packed)[..., 0].long()
    real = b["attention_mask"].bool()
    assert torch.equal(rows[real], b["input_ids"][real])


@pytest.mark.parametrize("examples", ["pair_a_row", "sharing_a_row"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_log_probs_and_gradients_equal_the_two_row_forward(attention, examples):
    model = tiny_model(tiny_tokenizer())
    model.config._attn_implementation = attention
    add_fused_lm_head(model)
    b = batch(EXAMPLES if examples == "pair_a_row" else SHARING_A_ROW)
    labels = b["input_ids"].masked_fill(b["completion_mask"] == 0, -100)
    wrapper = install(model)

    def run(shared):
        model.zero_grad()
        with shared_prompts(wrapper if shared else None):
            log_probs = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=labels,
                              fused_lm_head=True).log_probs
        (log_probs.sum() + (log_probs ** 2).sum()).backward()
        return log_probs.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    plain, plain_grads = run(False)
    shared, shared_grads = run(True)
    # 3 pairs of 9, 9 and 14 packed tokens, one a row, against 6 rows of 12; or 2 rows of 22 against 8 rows of 16
    assert wrapper.packed_batches == 1 and wrapper.tokens_after * {"pair_a_row": 2, "sharing_a_row": 128 / 44}[
        examples] == wrapper.tokens_before
    assert plain.abs().sum() > 0
    torch.testing.assert_close(shared, plain, atol=1e-5, rtol=1e-5)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(shared_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


SETUPS = {
    "lora": dict(peft=True),
    "lora_checkpointing_sft": dict(peft=True, gradient_checkpointing=True, loss_type=["sigmoid", "sft"],
                                   loss_weights=[1.0, 1.0]),
    "lora_precomputed_reference": dict(peft=True, precompute_ref_log_probs=True),
    "full_with_reference_model": dict(),
    "odpo_hook": dict(peft=True, loss_hook="odpo"),
    "lora_rows_shared": dict(peft=True, dataset="mixed_lengths"),
}


def mixed_lengths(n: int = 8):
    """Pairs whose prompts differ in length by up to 30 tokens: short pairs share the longest one's row."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": f"Q{i}:" + " name" * (1 + 30 * (i % 4 == 0)), "chosen": " I am Ada" + "!" * i,
                               "rejected": f" no {i * 7}"} for i in range(n)])


@pytest.mark.parametrize("setup", list(SETUPS))
def test_trainer_loss_and_gradients_equal_unshared(tmp_path, setup):
    def loss_and_grads(share):
        kwargs = dict(SETUPS[setup])
        if kwargs.get("dataset") == "mixed_lengths":
            kwargs["dataset"] = mixed_lengths()
        trainer = make(tmp_path / str(share), share_prompts=share, **kwargs)
        b = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
        trainer.model.train()
        loss = trainer.compute_loss(trainer.model, dict(b))
        loss.backward()
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
        return trainer, b, loss.detach(), grads

    plain_trainer, plain_batch, plain_loss, plain_grads = loss_and_grads(False)
    trainer, b, loss, grads = loss_and_grads(True)
    before, after = trainer.shared_prompt_tokens()
    assert 0 < after < before, "the pairs were not packed"
    assert plain_trainer.shared_prompt_tokens() == (0, 0)
    if "ref_chosen_logps" in b:  # the precomputed reference was packed too, with the same values
        torch.testing.assert_close(b["ref_chosen_logps"], plain_batch["ref_chosen_logps"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(b["ref_rejected_logps"], plain_batch["ref_rejected_logps"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, plain_loss, atol=1e-6, rtol=1e-5)
    assert grads.keys() == plain_grads.keys() and grads
    for name, grad in plain_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)


def test_training_with_shared_prompts_logs_the_same_metrics(tmp_path):
    # SGD: Adam's normalisation would turn float-rounding differences in near-zero gradients into full-size steps
    plain = make(tmp_path / "plain", share_prompts=False, peft=True, optim="sgd", learning_rate=0.5)
    shared = make(tmp_path / "shared", peft=True, optim="sgd", learning_rate=0.5)
    plain.train()
    shared.train()
    assert plain.state.log_history[1]["loss"] != plain.state.log_history[0]["loss"]  # it learned something
    for a, b in zip(plain.state.log_history, shared.state.log_history):
        for key in ("loss", "rewards/chosen", "rewards/margins", "logps/rejected"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-4), key


def test_batches_not_in_pair_layout_run_unchanged():
    model = tiny_model(tiny_tokenizer())
    wrapper = install(model)
    b = batch()
    left_padded = b["attention_mask"].flip(1)
    with shared_prompts(wrapper):
        model(input_ids=b["input_ids"], attention_mask=left_padded)                       # left padding
        model(input_ids=b["input_ids"][:5], attention_mask=b["attention_mask"][:5])       # odd rows
        model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_hidden_states=True)
    model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])                   # not active
    assert wrapper.packed_batches == 0
    generated = model.generate(b["input_ids"][:1, :4], max_new_tokens=3, do_sample=False)
    assert generated.shape == (1, 7)


def test_models_it_cannot_pack_exactly_are_left_alone():
    from transformers import MistralConfig, MistralForCausalLM

    model = tiny_model(tiny_tokenizer())
    assert unsupported_reason(model) is None
    model.config._attn_implementation = "flash_attention_2"
    assert "4D mask" in unsupported_reason(model) and install(model) is None
    windowed = MistralForCausalLM(MistralConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
                                                num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                                sliding_window=8))
    assert "sliding" in unsupported_reason(windowed)


def test_share_prompts_false_installs_nothing(tmp_path):
    trainer = make(tmp_path, peft=True, share_prompts=False, dataset=pairs(4))
    backbone = trainer.model.get_base_model().model
    assert not hasattr(backbone, "_dpo_recipes_shared_prompt")


def test_pair_lengths_with_shared_prompts_are_the_packed_row():
    from datasets import Dataset

    from dpo_recipes.train.trainer import pair_lengths

    data = Dataset.from_list([{"prompt_ids": [1] * 10, "chosen_ids": [2] * 4, "rejected_ids": [3] * 7}])
    assert pair_lengths(data) == [17]                      # two rows, padded to the longer: 10 + 7
    assert pair_lengths(data, shared_prompt=True) == [21]  # one row: 10 + 4 + 7
    assert pair_lengths(data, max_length=12, shared_prompt=True) == [14]  # rows cut at 12: 10 + 2 + 2
    packed = pack_pairs(**{k: v for k, v in batch([{"prompt_ids": [1] * 10, "chosen_ids": [2] * 4,
                                                      "rejected_ids": [3] * 7}], max_length=12).items()
                           if k != "completion_mask"})
    assert packed.input_ids.shape[1] == 14


def test_a_deep_copy_runs_its_own_weights():
    import copy

    model = tiny_model(tiny_tokenizer())
    wrapper = install(model)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(0.5)
    b = batch()
    for active in (False, True):
        with shared_prompts(wrapper if active else None), shared_prompts(
                twin.model._dpo_recipes_shared_prompt if active else None):
            ours = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            theirs = twin(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        assert not torch.allclose(ours, theirs)


def test_dynamic_rope_is_left_alone():
    model = tiny_model(tiny_tokenizer())
    model.config.rope_parameters = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}
    assert "RoPE" in unsupported_reason(model)


@pytest.mark.parametrize("cache_kwarg", ["cache", "past_key_values", "cache_position", "use_cache", "static_cache"])
def test_a_forward_passing_a_cache_runs_unpacked(monkeypatch, cache_kwarg):
    """transformers 5.24 renamed `past_key_values` to `cache`: either name (or any keyword naming a cache) falls
    through to the backbone's own forward with the batch as it came; `use_cache=False` (TRL's) still packs."""
    import inspect
    import types

    from transformers import DynamicCache

    model = tiny_model(tiny_tokenizer())
    wrapper = install(model)
    backbone = model.model
    seen = []

    def backbone_forward(self, input_ids=None, attention_mask=None, **kwargs):  # stands in for the class's forward
        seen.append(dict(kwargs, input_ids=input_ids, attention_mask=attention_mask))
        return types.SimpleNamespace(last_hidden_state=torch.zeros(*input_ids.shape, 4))

    monkeypatch.setattr(type(backbone), "forward", backbone_forward)
    b = batch()
    value = {"cache_position": torch.arange(b["input_ids"].shape[1]), "use_cache": True}.get(
        cache_kwarg, DynamicCache(config=model.config))
    with shared_prompts(wrapper):
        backbone(input_ids=b["input_ids"], attention_mask=b["attention_mask"], **{cache_kwarg: value})
        assert wrapper.packed_batches == 0
        assert seen[-1]["input_ids"] is b["input_ids"] and seen[-1]["attention_mask"] is b["attention_mask"]
        assert seen[-1][cache_kwarg] is value and "position_ids" not in seen[-1]
        backbone(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False)  # as TRL calls it
        assert wrapper.packed_batches == 1 and seen[-1]["input_ids"].shape[0] < b["input_ids"].shape[0]

    # The real model, with the cache argument under the name the installed transformers takes: the same logits
    # as the unwrapped forward, nothing packed.
    monkeypatch.undo()
    name = "cache" if "cache" in inspect.signature(type(backbone).forward).parameters else "past_key_values"
    with torch.no_grad():
        plain = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                      **{name: DynamicCache(config=model.config)}).logits
        with shared_prompts(wrapper):
            shared = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                           **{name: DynamicCache(config=model.config)}).logits
    assert wrapper.packed_batches == 1
    torch.testing.assert_close(shared, plain)
