"""Non-finite values never reach the weights: every optimizer step's loss and gradients are checked before the update.

`NonFiniteGuard.attach(trainer)` works on any transformers `Trainer` (TRL's DPO, KTO, ORPO, CPO trainers alike). At each
optimizer step it reads the gradient norm where Trainer computes it (`accelerator.clip_grad_norm_`, called once per
step, before `optimizer.step()`) and the losses of the step's micro-batches. When any of them is NaN or inf on any
process (the flags are summed over processes, so every process decides the same):

- the update is skipped: every gradient is set to None, so `optimizer.step()` leaves the weights and the optimizer state
  as they were (no weight decay, no momentum step);
- training stops after that step, with no checkpoint and no evaluation from that step on;
- `report()` says which step, what was non-finite (loss, gradient norm, which parameters) and which checkpoint is clean,
  and the recipes stop with it (exit status 2).

The check costs one extra norm over the gradients per optimizer step (Trainer's own clipping computes the same norm,
but after clipping a NaN norm has spread to every gradient and the offending tensors can no longer be named).

Where another mechanism owns overflow, the guard leaves it that job and says so:
- fp16 with a loss scaler (`accelerator.scaler`, CUDA AMP): a non-finite gradient is the scaler's normal signal to skip
  the step and lower the scale; those skips are counted (`scaler_skips`), not stopped. A non-finite loss still stops.
- DeepSpeed: the engine steps inside `backward`, before Trainer asks for the norm. With fp16 its loss scaler skips
  overflowing steps (counted, as above); with bf16 its overflow check (`bf16.check_grad_overflow`, on by default) skips
  the update and the guard stops the run with clean weights; in fp32 DeepSpeed applies the update, so the guard stops
  the run, blocks every checkpoint from that step on, and says the live weights are not clean.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from transformers import TrainerCallback

logger = logging.getLogger(__name__)


class NonFiniteGuard(TrainerCallback):
    """Skip and stop at the first optimizer step whose loss or gradients are not finite (see the module docstring).

    Attributes: `tripped` (None, or a dict: step, loss, grad_norm, parameters, update: 'skipped' or 'applied'),
    `scaler_skips` (steps a loss scaler skipped on its own).
    """

    def __init__(self):
        self.trainer = None
        self.tripped: dict | None = None
        self.scaler_skips = 0
        self._bad_loss: torch.Tensor | None = None  # a non-finite micro-batch loss since the last optimizer step
        self._checked_this_step = False
        self._warned_unchecked = False
        self._told = False
        self.on_trip = None  # called once with (step, values, text, control) when the guard trips: the health monitor

    @classmethod
    def attach(cls, trainer) -> NonFiniteGuard:
        """The trainer's guard: the one already attached, or a new one added to its callbacks."""
        for callback in trainer.callback_handler.callbacks:
            if isinstance(callback, cls):
                return callback
        guard = cls()
        guard.trainer = trainer
        trainer.add_callback(guard)
        original_step = trainer.training_step

        def training_step(*args, **kwargs):
            loss = original_step(*args, **kwargs)
            guard.saw_loss(loss)
            return loss

        trainer.training_step = training_step
        return guard

    # --- what Trainer calls ------------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        """Wrap the accelerator's `clip_grad_norm_` (the accelerator is final once training begins)."""
        accelerator = self.trainer.accelerator
        if getattr(accelerator.clip_grad_norm_, "_nonfinite_guard", None) is self:
            return
        original = accelerator.clip_grad_norm_

        def clip_grad_norm_(parameters, max_norm, norm_type=2):
            return self._check(list(parameters), lambda params: original(params, max_norm, norm_type))

        clip_grad_norm_._nonfinite_guard = self
        accelerator.clip_grad_norm_ = clip_grad_norm_

    def saw_loss(self, loss: torch.Tensor) -> None:
        """Keep a non-finite micro-batch loss (on its device: no synchronisation until the optimizer step)."""
        loss = loss.detach().float().reshape(())
        if self._bad_loss is None:
            self._bad_loss = torch.zeros((), device=loss.device)
        self._bad_loss = torch.where(torch.isfinite(loss), self._bad_loss, loss)

    def on_step_end(self, args, state, control, **kwargs):
        if not self._checked_this_step and self.tripped is None:
            self._unchecked_step(state)
        self._checked_this_step = False
        self._bad_loss = None
        if self.tripped is not None:
            self._block(control)
            if self.on_trip is not None and not self._told:
                self._told = True
                self.on_trip(self.tripped["step"], self.values(), self.report(step=False), control)

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.tripped is not None:  # Trainer saves/evaluates once more after the loop breaks (epoch strategies)
            self._block(control)

    @staticmethod
    def _block(control) -> None:
        control.should_save = False
        control.should_evaluate = False
        control.should_training_stop = True

    # --- the check ---------------------------------------------------------------------------------------------------
    def _check(self, parameters: list[torch.nn.Parameter], clip):
        """Check the step before Trainer clips; returns the gradient norm Trainer logs."""
        self._checked_this_step = True
        accelerator = self.trainer.accelerator
        if accelerator.distributed_type.value == "DEEPSPEED":
            return self._check_deepspeed(parameters, clip)
        grads = [p.grad for p in parameters if p.grad is not None]
        norm = _total_norm(grads) if grads else torch.zeros(())
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP2 DTensor
        bad_grad, bad_loss = self._flags(norm)
        if bad_grad and accelerator.scaler is not None and not bad_loss:
            self.scaler_skips += 1  # the loss scaler skips this step and lowers its scale
            return clip(parameters)
        if not (bad_grad or bad_loss):
            return clip(parameters)
        named = self._nonfinite_parameters(parameters) if bad_grad else []
        for p in parameters:  # optimizer.step() skips a parameter without a gradient: no update, no state change
            p.grad = None
        self._trip(norm, named, update="skipped")
        return norm

    def _check_deepspeed(self, parameters, clip):
        norm = clip(parameters)  # DeepSpeed has stepped already: this is the engine's global norm
        value = torch.as_tensor(norm if norm is not None else 0.0, dtype=torch.float32)
        bad_grad, bad_loss = self._flags(value.to(self.trainer.accelerator.device))
        if not (bad_grad or bad_loss):
            return norm
        engine = self.trainer.accelerator.deepspeed_engine_wrapped.engine
        if bad_grad and not bad_loss and engine.fp16_enabled():
            self.scaler_skips += 1  # DeepSpeed's fp16 loss scaler skipped it
            return norm
        applied = engine.was_step_applied() if hasattr(engine, "was_step_applied") else True
        self._trip(value, [], update="applied" if applied else "skipped by DeepSpeed's overflow check")
        return norm

    def _flags(self, norm: torch.Tensor) -> tuple[bool, bool]:
        """(a gradient is non-finite, a loss is non-finite) on any process."""
        bad_loss = self._bad_loss if self._bad_loss is not None else torch.zeros((), device=norm.device)
        flags = torch.stack([~torch.isfinite(norm.float().reshape(())),
                             ~torch.isfinite(bad_loss.to(norm.device))]).float()
        if self.trainer.accelerator.num_processes > 1:
            flags = self.trainer.accelerator.reduce(flags, "sum")
        bad_grad, bad_loss_any = (bool(x > 0) for x in flags.tolist())
        return bad_grad, bad_loss_any

    def _nonfinite_parameters(self, parameters) -> list[str]:
        names = {id(p): n for n, p in self.trainer.model.named_parameters()}
        return [names.get(id(p), f"parameter {i}") for i, p in enumerate(parameters)
                if p.grad is not None and not bool(torch.isfinite(p.grad).all())]

    def _trip(self, norm: torch.Tensor, parameters: list[str], update: str) -> None:
        state = self.trainer.state
        loss = float(self._bad_loss) if self._bad_loss is not None else None
        self.tripped = {"step": state.global_step + 1, "grad_norm": float(norm.float()),
                        "loss": loss if loss is not None and loss != 0.0 else None,
                        "parameters": parameters, "trainable_tensors": _trainable_count(self.trainer.model),
                        "update": update, "learning_rate": _learning_rate(self.trainer),
                        "weights_finite": None}
        if update != "applied":
            self.tripped["weights_finite"] = _weights_finite(self.trainer.model)

    def _unchecked_step(self, state) -> None:
        """Trainer stepped without asking the accelerator for the norm (a transformers version that computes it
        elsewhere): the guard can no longer act before the update, so it checks the weights after it instead."""
        if not self._warned_unchecked:
            self._warned_unchecked = True
            logger.warning("The non-finite guard saw an optimizer step without Trainer's gradient-norm call "
                           "(accelerator.clip_grad_norm_): this transformers version computes it elsewhere. The guard "
                           "now checks the weights after each update instead of the gradients before it.")
        if not _weights_finite(self.trainer.model):
            self.tripped = {"step": state.global_step, "grad_norm": None, "loss": None, "parameters": [],
                            "trainable_tensors": _trainable_count(self.trainer.model), "update": "applied",
                            "learning_rate": _learning_rate(self.trainer), "weights_finite": False}

    # --- what it says ------------------------------------------------------------------------------------------------
    def values(self) -> dict:
        """The tripped step's figures, for the health monitor's alarm record."""
        t = self.tripped or {}
        return {k: t[k] for k in ("loss", "grad_norm", "learning_rate") if t.get(k) is not None}

    def report(self, step: bool = True) -> str:
        """One paragraph: the step, what was not finite, where it was, whether it reached the weights, what is clean."""
        t = self.tripped
        if t is None:
            return ""
        what = []
        if t["loss"] is not None:
            what.append(f"loss {t['loss']:g}")
        if t["grad_norm"] is not None:
            what.append(f"gradient norm {t['grad_norm']:g}")
        found = "non-finite " + (" and ".join(what) if what else "weights after the update")
        if t["parameters"]:
            found += (f" ({len(t['parameters'])} of {t['trainable_tensors']} trainable tensors have non-finite "
                      f"gradients: {', '.join(group_names(t['parameters']))})")
        output_dir = getattr(self.trainer.args, "output_dir", None)
        clean = last_checkpoint_before(output_dir, t["step"])
        saved = f"the last checkpoint, {clean}, is clean" if clean else "no checkpoint was written before it"
        if t["update"] == "applied":
            why = "DeepSpeed fp32 has no overflow check" if t["grad_norm"] is not None else "found after it"
            outcome = (f"The update was applied ({why}), so the live weights are not clean: nothing is saved from "
                       f"this step on, and {saved}.")
        else:
            kept = ("the live weights are finite" if t["weights_finite"] else
                    "but the live weights were already non-finite before this step")
            how = "by DeepSpeed's overflow check" if "DeepSpeed" in t["update"] else "before the optimizer applied it"
            outcome = (f"The update was skipped {how}: {kept}, nothing is saved from this step on, and {saved}.")
        lr = f" (now {t['learning_rate']:.3g})" if t.get("learning_rate") else ""
        clip = getattr(self.trainer.args, "max_grad_norm", None)
        clip = "" if isinstance(clip, (int, float)) and clip > 0 else " max_grad_norm 1.0 (now off),"
        return (f"{'Step %d: ' % t['step'] if step else ''}{found}. {outcome} Usually fp16 overflow, a learning rate "
                f"too high or a broken batch. Try: bf16 or fp32 instead of fp16, a lower learning_rate{lr},{clip} and "
                "`dpo-recipes validate` on the data.")


def _total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all gradients together (torch >= 2.6 has it fused; before, one norm per tensor)."""
    if hasattr(torch.nn.utils, "get_total_norm"):
        return torch.nn.utils.get_total_norm(grads, error_if_nonfinite=False)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))


def group_names(names: list[str], most: int = 3) -> list[str]:
    """Parameter names with their layer numbers folded ('layers.0.mlp.up_proj', 'layers.1.mlp.up_proj' ->
    'layers.*.mlp.up_proj'), in first-seen order, at most `most` and '...'."""
    groups: list[str] = []
    for name in names:
        folded = re.sub(r"\.\d+\.", ".*.", name.removeprefix("base_model.model."))
        if folded not in groups:
            groups.append(folded)
    return groups[:most] + (["..."] if len(groups) > most else [])


def last_checkpoint_before(output_dir: str | None, step: int) -> str | None:
    """The newest OUTPUT_DIR/checkpoint-N with N < step, or None."""
    if not output_dir or not Path(output_dir).is_dir():
        return None
    steps = [int(m.group(1)) for p in Path(output_dir).iterdir() if (m := re.fullmatch(r"checkpoint-(\d+)", p.name))]
    earlier = [s for s in steps if s < step]
    return str(Path(output_dir) / f"checkpoint-{max(earlier)}") if earlier else None


def _weights_finite(model) -> bool:
    with torch.no_grad():
        return all(bool(torch.isfinite(p).all()) for p in model.parameters() if p.requires_grad and p.numel())


def _trainable_count(model) -> int:
    return sum(1 for p in model.parameters() if p.requires_grad)


def _learning_rate(trainer) -> float | None:
    try:
        return float(trainer.optimizer.param_groups[0]["lr"])
    except (AttributeError, IndexError, KeyError, TypeError):
        return None

