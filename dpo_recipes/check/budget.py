"""Will the run move the model at all? The learning-rate budget: the sum of the schedule's learning rates over the
run's optimizer steps.

AdamW moves each weight by about the learning rate per step at most (its update is the gradient over its own running
scale), so the summed schedule bounds how far any weight can travel. LoRA's B matrix starts at zero, so the adapter's
whole effect grows from that budget; full training moves every weight, and far smaller budgets show. The floors below
sit well under any working recipe: the default identity run spends ~1.7e-2 (50 steps, cosine from 7e-4), lora-cpu on
20,000 pairs ~1.5e-3 (625 steps at up to 5e-6), the Zephyr full-parameter recipe ~1.2e-4 (about 480 steps at up to
5e-7). A user's 40 pairs with lora-cpu spend 5e-6 (2 steps, the first at learning rate 0 in warmup): the rewards
never leave 0. The floors (2e-5 LoRA, 2e-6 full) flag what is two orders of magnitude under those working runs, about
eight LoRA steps at lora-cpu's 5e-6: an alarm for a run that cannot learn, not a tuning advice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dpo_recipes.check.findings import Setup

FLOOR = {"lora": 2e-5, "full": 2e-6}  # summed learning rate below which a run barely moves the model


def learning_rate_sum(args, steps: int) -> float:
    """Sum of the learning rate over `steps` optimizer steps, from transformers' own scheduler for these arguments."""
    import torch
    from transformers import get_scheduler

    steps = min(int(steps), 200_000)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=args.learning_rate)
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=args.get_warmup_steps(steps),
                              num_training_steps=steps, scheduler_specific_kwargs=args.lr_scheduler_kwargs or {})
    total = 0.0
    for _ in range(steps):
        total += optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
    return total


def learning_budget(s: Setup):
    steps = s.args.max_steps if s.args.max_steps > 0 else (s.data or {}).get("steps")
    if not steps or s.trainer not in ("dpo", "kto", "orpo", "cpo"):
        return
    try:
        spent = learning_rate_sum(s.args, steps)
    except Exception:  # noqa: BLE001 - a scheduler transformers cannot build here: TRL will say so at start
        return
    kind = "lora" if s.peft else "full"
    if spent < FLOOR[kind]:
        yield s.find("risky", "learning_rate",
                     f"{steps} optimizer step(s) with this schedule sum to a learning rate of {spent:.2g} (warmup "
                     f"included), under the {FLOOR[kind]:g} a {kind} run needs to move the model: its rewards and "
                     "accuracies would stay at 0 (see dpo_recipes/check/budget.py).",
                     "more steps (more pairs, num_train_epochs, or a smaller per_device_train_batch_size x "
                     "gradient_accumulation_steps), or a larger learning_rate.")
