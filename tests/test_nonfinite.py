"""The non-finite guard: a NaN/inf loss or gradient never reaches the weights or a checkpoint, on RecipeDPOTrainer and
on TRL's own trainers, and the message it stops with is true (step, what, which checkpoint is clean)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers import Qwen2Config, Qwen2ForCausalLM, TrainerCallback
from trl import DPOTrainer

from dpo_recipes.errors import DPORecipesError
from dpo_recipes.watch.monitor import HealthMonitor
from dpo_recipes.train.nonfinite import NonFiniteGuard, group_names
from dpo_recipes.train.trainer import RecipeDPOTrainer
from test_trainer import config, pairs, tiny_model, tiny_tokenizer


def finite(tensors) -> bool:
    return all(bool(torch.isfinite(t.float()).all()) for t in tensors)


def checkpoints(out: Path) -> dict[int, Path]:
    return {int(p.name.split("-")[1]): p for p in out.glob("checkpoint-*")}


def checkpoint_weights(path: Path) -> list[torch.Tensor]:
    files = list(path.glob("*.safetensors"))
    assert files, f"no weights in {path}"
    return [t for f in files for t in load_file(f).values()]


class PoisonGradient(TrainerCallback):
    """From optimizer step `at` on (1-based), one parameter's gradient becomes NaN while the loss stays finite."""

    def __init__(self, parameter: torch.nn.Parameter, at: int):
        self.at, self.armed = at, False
        parameter.register_hook(lambda grad: grad * float("nan") if self.armed else grad)

    def on_step_begin(self, args, state, control, **kwargs):
        self.armed = state.global_step + 1 >= self.at


def test_fp16_at_lr_0_1_stops_before_any_nonfinite_value_reaches_a_weight_or_checkpoint(tmp_path, one_torch_thread):
    # TRL's test_train_model_dtype setup: a tiny Qwen2 in float16, learning rate 0.1. Without the guard, step 4's NaN
    # gradient (finite loss) was applied and step 5 stopped on the loss, claiming a clean step-4 checkpoint.
    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    model_dir = tmp_path / "qwen2"
    Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id)).save_pretrained(model_dir)
    args = config(tmp_path, learning_rate=0.1, max_steps=12, save_strategy="steps", save_steps=1,
                  model_init_kwargs={"dtype": torch.float16})
    trainer = RecipeDPOTrainer(model=str(model_dir), args=args, train_dataset=pairs(16, scores=False),
                               processing_class=tokenizer)
    assert next(trainer.model.parameters()).dtype == torch.float16
    with pytest.raises(DPORecipesError) as stopped:
        trainer.train()
    tripped = trainer.nonfinite_guard.tripped
    assert tripped is not None and tripped["update"] == "skipped"
    assert finite(trainer.model.parameters()), "a non-finite value reached the live weights"
    saved = checkpoints(Path(args.output_dir))
    assert saved and max(saved) < tripped["step"], "a checkpoint was written at or after the non-finite step"
    for step, path in saved.items():
        assert finite(checkpoint_weights(path)), f"checkpoint-{step} holds non-finite weights"
    message = str(stopped.value)
    assert message.startswith(f"Step {tripped['step']}: non-finite ")
    assert "The update was skipped before the optimizer applied it: the live weights are finite" in message
    assert f"the last checkpoint, {saved[max(saved)]}, is clean" in message


def test_a_nan_gradient_with_a_finite_loss_is_skipped_named_and_never_saved(tmp_path, one_torch_thread):
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer)
    target = model.model.layers[1].mlp.up_proj.weight
    args = config(tmp_path, max_steps=4, save_strategy="steps", save_steps=1, max_grad_norm=1.0)
    monitor = HealthMonitor("warn")
    trainer = RecipeDPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args,
                               train_dataset=pairs(8, scores=False), processing_class=tokenizer, callbacks=[monitor])
    trainer.nonfinite_guard.on_trip = monitor.record_nonfinite_update
    trainer.add_callback(PoisonGradient(target, at=2))
    with pytest.raises(DPORecipesError) as stopped:
        trainer.train()
    tripped = trainer.nonfinite_guard.tripped
    assert tripped["step"] == 2 and tripped["loss"] is None and not torch.isfinite(torch.tensor(tripped["grad_norm"]))
    assert tripped["parameters"] == ["model.layers.1.mlp.up_proj.weight"]
    assert finite(trainer.model.parameters())
    assert sorted(checkpoints(Path(args.output_dir))) == [1]
    assert finite(checkpoint_weights(Path(args.output_dir) / "checkpoint-1"))
    assert trainer.state.global_step == 2  # stopped after the skipped step, not later
    message = str(stopped.value)
    assert "1 of 21 trainable tensors have non-finite gradients: model.layers.*.mlp.up_proj.weight" in message
    assert f"the last checkpoint, {Path(args.output_dir) / 'checkpoint-1'}, is clean" in message
    # the health monitor records it as its 'nan' alarm, with the same words
    assert [a["kind"] for a in monitor.alarms] == ["nan"] and monitor.nonfinite_step == 2
    assert "The update was skipped" in monitor.alarms[0]["message"]


def test_the_skipped_update_leaves_weights_and_optimizer_state_untouched(tmp_path, one_torch_thread):
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer)
    args = config(tmp_path, max_steps=3, weight_decay=0.1)
    trainer = RecipeDPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args,
                               train_dataset=pairs(8, scores=False), processing_class=tokenizer)
    snapshot = {}

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:
                snapshot.update({n: p.detach().clone() for n, p in model.named_parameters()})

    trainer.add_callback(Snapshot())
    trainer.add_callback(PoisonGradient(model.model.embed_tokens.weight, at=2))
    with pytest.raises(DPORecipesError):
        trainer.train()
    for name, weight in model.named_parameters():  # no weight decay, no momentum step at the skipped update
        torch.testing.assert_close(weight, snapshot[name], rtol=0, atol=0, msg=name)


def test_the_guard_protects_trl_s_own_trainers_too(tmp_path, one_torch_thread):
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer)
    trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=config(tmp_path, max_steps=3),
                         train_dataset=pairs(8, scores=False), processing_class=tokenizer)
    guard = NonFiniteGuard.attach(trainer)
    assert NonFiniteGuard.attach(trainer) is guard  # attached once
    trainer.add_callback(PoisonGradient(model.lm_head.weight, at=2))
    trainer.train()  # a plain TRL trainer stops; the recipes' run.train raises guard.report()
    assert guard.tripped["step"] == 2 and trainer.state.global_step == 2
    assert finite(model.parameters())
    assert "trainable tensors have non-finite gradients: lm_head.weight" in guard.report()


def test_a_nonfinite_loss_is_named_and_skipped(tmp_path, one_torch_thread):
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer)
    trainer = RecipeDPOTrainer(model=model, ref_model=copy.deepcopy(model), args=config(tmp_path, max_steps=3),
                               train_dataset=pairs(8, scores=False), processing_class=tokenizer)
    original = trainer.compute_loss

    def compute_loss(*args, **kwargs):
        loss = original(*args, **kwargs)
        return loss * float("inf") if trainer.state.global_step == 1 else loss

    trainer.compute_loss = compute_loss
    with pytest.raises(DPORecipesError, match=r"^Step 2: non-finite loss (inf|nan)"):
        trainer.train()
    assert finite(model.parameters())


# --- where another mechanism owns overflow ----------------------------------------------------------------------------
def fake_trainer(distributed: str, *, scaler=None, engine=None, step: int = 6):
    parameter = torch.nn.Parameter(torch.ones(2))
    model = torch.nn.Module()
    model.weight = parameter
    accelerator = SimpleNamespace(distributed_type=SimpleNamespace(value=distributed), scaler=scaler,
                                  num_processes=1, device=torch.device("cpu"),
                                  deepspeed_engine_wrapped=SimpleNamespace(engine=engine))
    return SimpleNamespace(accelerator=accelerator, model=model, state=SimpleNamespace(global_step=step),
                           args=SimpleNamespace(output_dir=None),
                           optimizer=SimpleNamespace(param_groups=[{"lr": 1e-3}])), parameter


def test_a_loss_scaler_s_overflow_is_its_own_to_skip(one_torch_thread):
    trainer, parameter = fake_trainer("NO", scaler=object())
    guard = NonFiniteGuard()
    guard.trainer = trainer
    parameter.grad = torch.tensor([float("inf"), 1.0])
    norm = guard._check([parameter], lambda params: torch.tensor(float("inf")))
    assert guard.tripped is None and guard.scaler_skips == 1 and not torch.isfinite(norm)
    assert parameter.grad is not None  # left for the scaler, which skips the step itself


@pytest.mark.parametrize("fp16, applied, update", [(True, False, None),
                                                    (False, False, "skipped by DeepSpeed's overflow check"),
                                                    (False, True, "applied")])
def test_deepspeed_s_own_overflow_handling_is_used_and_named(fp16, applied, update, one_torch_thread):
    engine = SimpleNamespace(fp16_enabled=lambda: fp16, was_step_applied=lambda: applied)
    trainer, parameter = fake_trainer("DEEPSPEED", engine=engine)
    guard = NonFiniteGuard()
    guard.trainer = trainer
    guard._check([parameter], lambda params: float("inf"))
    if update is None:
        assert guard.tripped is None and guard.scaler_skips == 1
        return
    assert guard.tripped["update"] == update and guard.tripped["step"] == 7
    report = guard.report()
    if applied:
        assert "The update was applied (DeepSpeed fp32 has no overflow check), so the live weights are not clean" in report
    else:
        assert "The update was skipped by DeepSpeed's overflow check: the live weights are finite" in report


def test_parameter_names_fold_their_layer_numbers():
    names = [f"base_model.model.model.layers.{i}.self_attn.{m}.lora_A.default.weight" for i in range(3)
             for m in ("q_proj", "v_proj")] + ["lm_head.weight", "model.norm.weight"]
    assert group_names(names) == ["model.layers.*.self_attn.q_proj.lora_A.default.weight",
                                  "model.layers.*.self_attn.v_proj.lora_A.default.weight", "lm_head.weight", "..."]
    assert re.fullmatch(r"\S+", group_names(["a.0.b"])[0])


def test_the_total_norm_is_the_same_without_torch_s_fused_one(monkeypatch):
    from dpo_recipes.train import nonfinite

    grads = [torch.randn(3, 4), torch.randn(5)]
    fused = nonfinite._total_norm(grads)
    monkeypatch.delattr(torch.nn.utils, "get_total_norm")
    torch.testing.assert_close(nonfinite._total_norm(grads), fused)
    assert not torch.isfinite(nonfinite._total_norm([torch.tensor([float("nan")]), torch.ones(2)]))
