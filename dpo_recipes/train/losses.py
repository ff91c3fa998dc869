"""Pure tensor functions for the DPO loss variants TRL 1.16 lacks: ODPO and length-regularized DPO (R-DPO).

Every input is one value per preference pair: summed completion log-probabilities (nats) of the policy and of the
reference for the chosen (y_w) and rejected (y_l) completion, plus per-pair scores or lengths. Every function returns
per-pair losses (shape `[batch]`); the caller takes the mean. Nothing here touches a model, so the formulas can be
tested on their own (`tests/test_losses.py`) and reused outside TRL.

With h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l)), DPO's sigmoid loss is -log sigma(beta * h).
The two variants only move the logit:

- ODPO  (Amini et al. 2024):        -log sigma(beta * h - alpha * log(s_w - s_l))      [or log(s_w / s_l)]
- R-DPO (Park et al. 2024, eq. 9):  -log sigma(beta * h + alpha * (|y_w| - |y_l|))     (lengths in tokens)

A note on a tempting but useless alternative: adding lambda * E[|y_w| - |y_l|] to the DPO loss outside the sigmoid
adds a constant of the data. Its gradient with respect to the policy is zero, so it changes nothing. R-DPO works because
its length term sits inside the sigmoid, where it changes each pair's weight in the gradient.

One function works per token instead: `anchor_k2`, the drift penalty on anchor pairs (general answers the model must
keep), 1/2 (log pi(y_t) - log pi_ref(y_t))^2 per completion token: the k2 estimator of KL(pi || pi_ref) from
Schulman's "Approximating KL divergence" (2020), low-variance, never negative, zero exactly when the two agree.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["anchor_k2", "dpo_logratio", "odpo_offset", "odpo_loss", "rdpo_length_margin", "rdpo_loss"]


def dpo_logratio(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
                 ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor) -> torch.Tensor:
    """h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l)), per pair.

    Computed in the same order as TRL's `DPOTrainer._compute_loss` (chosen log-ratio minus rejected log-ratio), so
    that with a zero offset the hooks reproduce TRL's sigmoid loss bit for bit.
    """
    return (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)


def odpo_offset(score_chosen: torch.Tensor, score_rejected: torch.Tensor, *, alpha: float = 1.0,
                ratio: bool = False) -> torch.Tensor:
    """ODPO's offset Delta_r = alpha * log(s_w - s_l), or alpha * log(s_w / s_l) with `ratio=True`.

    The offset is a per-pair margin that the implicit reward difference beta * h must exceed: a pair whose chosen
    answer scores much higher asks for a larger gap. Scores must satisfy s_w > s_l (and s_w, s_l > 0 with `ratio`);
    otherwise the log is undefined. `RecipeDPOTrainer` checks this on the dataset before training.
    """
    if ratio:
        log_gap = torch.log(score_chosen / score_rejected)
    else:
        log_gap = torch.log(score_chosen - score_rejected)
    return alpha * log_gap


def odpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
              ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor,
              score_chosen: torch.Tensor, score_rejected: torch.Tensor, *,
              beta: float, alpha: float = 1.0, ratio: bool = False) -> torch.Tensor:
    """ODPO per-pair loss: -log sigma(beta * h - alpha * log(s_w - s_l)) (Amini et al. 2024, "DPO with an Offset").

    Args:
        policy_*_logps, ref_*_logps: summed completion log-probs per pair (nats), shape [batch].
        score_chosen, score_rejected: the scores (e.g. reward-model or rating values) of y_w and y_l, shape [batch].
        beta: DPO's KL coefficient.
        alpha: offset scale; 0 gives plain DPO. The paper's default is 1.0.
        ratio: use log(s_w / s_l) instead of log(s_w - s_l) (the paper's code offers both).
    """
    h = dpo_logratio(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    offset = odpo_offset(score_chosen.to(h.dtype), score_rejected.to(h.dtype), alpha=alpha, ratio=ratio)
    return -F.logsigmoid(beta * h - offset)


def rdpo_length_margin(chosen_lengths: torch.Tensor, rejected_lengths: torch.Tensor, *, alpha: float) -> torch.Tensor:
    """R-DPO's length term alpha * (|y_w| - |y_l|), lengths in completion tokens."""
    return alpha * (chosen_lengths - rejected_lengths)


def rdpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
              ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor,
              chosen_lengths: torch.Tensor, rejected_lengths: torch.Tensor, *,
              beta: float, alpha: float) -> torch.Tensor:
    """R-DPO per-pair loss: -log sigma(beta * h + alpha * (|y_w| - |y_l|)) (Park et al. 2024, eq. 9).

    A pair whose chosen completion is longer gets a larger logit, so a smaller loss and a smaller gradient: the policy
    is no longer paid for preferring length. Lengths are completion tokens (not characters); alpha is per token, so
    its scale depends on how long the data's completions are. alpha = 0 gives plain DPO.
    """
    h = dpo_logratio(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    margin = rdpo_length_margin(chosen_lengths.to(h.dtype), rejected_lengths.to(h.dtype), alpha=alpha)
    return -F.logsigmoid(beta * h + margin)


def anchor_k2(policy_token_logps: torch.Tensor, ref_token_logps: torch.Tensor,
              mask: torch.Tensor) -> torch.Tensor:
    """Per sequence: the mean over its completion tokens of 1/2 (log pi(y_t) - log pi_ref(y_t))^2.

    Inputs are per-token log-probs of the tokens in the sequence, `[batch, tokens]`, and the completion mask of the
    same shape (1 where the token is part of the answer). The result is `[batch]`; a sequence without completion
    tokens gives 0. Teacher-forced on the reference's own answers (an anchor's chosen side is the base model's
    answer), this is Schulman's k2 estimator of KL(pi || pi_ref) at those positions: its gradient pulls each
    answer token's log-probability back to the reference's, from either side, and vanishes where they agree.
    """
    mask = mask.to(policy_token_logps.dtype)
    delta = (policy_token_logps - ref_token_logps) * mask
    return 0.5 * (delta ** 2).sum(dim=1) / mask.sum(dim=1).clamp_min(1)
