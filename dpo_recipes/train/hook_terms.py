"""How the hooks' terms join TRL's loss without copying TRL's 300-line `_compute_loss` (mixed into RecipeDPOTrainer).

1. TRL computes everything it normally does (policy forward, reference log-probs, the other loss terms such as
   `sft`, and all `rewards/*`, `logps/*`, `logits/*` metrics), with the terms a hook replaces left out of its sum
   (`_without_terms`; verified once per run against the loss TRL returned: `_verify_term_swap`).
2. While it runs, forward hooks record the per-token log-probs the fused LM head returns for the policy and (when not
   precomputed) the reference. From them the hook builds the same summed log-probs TRL uses, in the same order.
3. The hook's per-pair loss (ODPO or R-DPO) replaces the sigmoid term, with the sigmoid's weight; the anchor term is
   added with its coefficient, and TRL's `sft` term is taken over the non-anchor pairs only.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from accelerate.utils import is_peft_model

from dpo_recipes.errors import DPORecipesError
from dpo_recipes.train.hooks import ANCHOR_REFERENCE, BATCH_ONLY, SCORE_COLUMNS
from dpo_recipes.train.internals import warn_once
from dpo_recipes.train.losses import anchor_k2, dpo_logratio, odpo_loss, odpo_offset, rdpo_length_margin, rdpo_loss


class HookTerms:
    """The hook, anchor and SFT-without-anchors terms, and the recording of TRL's fused-head log-probs they read.
    A mixin for `RecipeDPOTrainer` (it reads the trainer's `loss_hook`, `anchor_coef`, `odpo_*`, `rdpo_alpha`)."""

    def _verify_term_swap(self, loss, replaced: list[str], records, inputs: dict[str, Any]) -> None:
        """Once per run: TRL's loss with `replaced` taken out of `loss_types` (`_without_terms`) must hold none of them.
        TRL 1.16 sums the terms in `self.loss_types` (`internals`); if a TRL read them from elsewhere, the hook's term
        would count twice, silently. Checked exactly where the kept terms can be computed here from the recorded
        forward: none kept (the loss is 0), `sft` alone (minus the mean chosen-token log-prob), or plain `sigmoid`
        alone (DPO's -log sigmoid(beta h), the default run's case: anchors replace `sft`)."""
        self._swap_verified = True
        kept = [t for t in self.loss_types if t not in replaced]
        plain_sigmoid = (getattr(self, "f_divergence_type", "reverse_kl") == "reverse_kl" and self.ld_alpha is None
                         and not self.use_weighting)
        if self.aux_loss_enabled or kept not in ([], ["sft"], ["sigmoid"]) or (kept == ["sigmoid"]
                                                                                 and not plain_sigmoid):
            warn_once("term swap", f"loss_type {self.loss_types}: with {kept} next to the hook's terms the loss TRL "
                      "computed cannot be checked for the terms the hook replaces; relying on TRL 1.16 summing "
                      "DPOTrainer.loss_types.")
            return
        expected = torch.zeros(())
        if kept == ["sft"]:
            policy, _ = self._token_log_probs(records, inputs)
            mask = inputs["completion_mask"][..., 1:].chunk(2, dim=0)[0].bool()
            expected = -policy.chunk(2, dim=0)[0][mask].mean() * self.loss_weights[self.loss_types.index("sft")]
        elif kept == ["sigmoid"]:
            h = dpo_logratio(*self._summed_log_probs(records, inputs))
            expected = -torch.nn.functional.logsigmoid(self.beta * h).mean() * self.loss_weights[
                self.loss_types.index("sigmoid")]
        actual = torch.as_tensor(loss).detach().float().cpu()
        if not torch.allclose(actual, expected.detach().float().cpu(), rtol=1e-3, atol=1e-4):
            raise DPORecipesError(
                f"This TRL ({_trl_version()}) computed a DPO loss of {float(actual):.6g} with {replaced} taken out of "
                f"DPOTrainer.loss_types, where {float(expected):.6g} was expected: it no longer sums the terms listed "
                "there, so the hook's term would be counted twice. Use TRL 1.16, or unset loss_hook and anchor_coef.")

    def _summed_log_probs(self, records, inputs: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        """(policy chosen, policy rejected, reference chosen, reference rejected) summed log-probs, as TRL sums them."""
        policy, reference = self._token_log_probs(records, inputs)
        chosen_logps, rejected_logps = policy.sum(dim=1).chunk(2, dim=0)
        if reference is None:  # precomputed or cached: TRL's batch holds the totals
            ref_chosen_logps, ref_rejected_logps = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            ref_chosen_logps, ref_rejected_logps = reference.sum(dim=1).chunk(2, dim=0)
        return chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps

    def _compute_loss_with_hook(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        scores = {k: inputs[k] for k in SCORE_COLUMNS if k in inputs}
        anchors = inputs.get("anchor")
        cached_reference = inputs.get(ANCHOR_REFERENCE)
        inputs = {k: v for k, v in inputs.items() if k not in BATCH_ONLY}
        if self.loss_hook is None and not self.anchor_coef:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

        replaced = ["sigmoid"] if self.loss_hook else []
        if self.anchor_coef and "sft" in self.loss_types:
            replaced.append("sft")  # taken over the non-anchor pairs below
        with self._record_log_probs(model) as records, self._without_terms(replaced):
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, outputs = result if return_outputs else (result, None)
        if replaced and not self._swap_verified:
            self._verify_term_swap(loss, replaced, records, inputs)

        if self.loss_hook is not None:
            hook_loss = self._hook_loss(records, inputs, scores)
            loss = loss + hook_loss.mean() * self.loss_weights[self.loss_types.index("sigmoid")]
        if self.anchor_coef:
            loss = loss + self.anchor_coef * self._anchor_loss(records, inputs, anchors, cached_reference)
            if "sft" in replaced:
                loss = loss + self.loss_weights[self.loss_types.index("sft")] * self._sft_without_anchors(
                    records, inputs, anchors)
        return (loss, outputs) if return_outputs else loss

    def _sft_without_anchors(self, records, inputs: dict[str, Any], anchors: torch.Tensor) -> torch.Tensor:
        """TRL's `sft` term (minus the mean log-prob over the batch's chosen tokens) over the non-anchor pairs only.

        On an anchor, SFT would raise the likelihood of the model's own answer: it sharpens the model on general
        prompts, the very drift the anchor term holds back (and long general answers would outweigh the short
        identity answers in TRL's per-token mean). 0 for a batch of anchors only."""
        policy, _ = self._token_log_probs(records, inputs)
        chosen_mask = inputs["completion_mask"][..., 1:].chunk(2, dim=0)[0].bool()
        keep = chosen_mask & ~anchors.to(chosen_mask.device)[:, None]
        chosen = policy.chunk(2, dim=0)[0]
        return -chosen[keep].mean() if bool(keep.any()) else chosen.sum() * 0.0

    def _anchor_loss(self, records: list[tuple[str, torch.Tensor]], inputs: dict[str, Any],
                     anchors: torch.Tensor | None, cached_reference: torch.Tensor | None = None) -> torch.Tensor:
        """The anchor term: `anchor_k2` on the chosen side of the batch's anchor pairs, averaged over those pairs.
        The reference per token comes from this step's reference forward, or from the reference cache
        (`cached_reference`, chosen rows) when the cache served the batch."""
        if anchors is None:
            raise DPORecipesError("anchor_coef is set but this batch has no 'anchor' flags: the dataset lacks the "
                                  "column (e.g. one passed to evaluate() later), or a custom data_collator dropped it.")
        policy, reference = self._token_log_probs(records, inputs)
        mask = inputs["completion_mask"][..., 1:]
        chosen_mask = mask.chunk(2, dim=0)[0]
        policy_chosen = policy.chunk(2, dim=0)[0]
        reference_chosen = reference.chunk(2, dim=0)[0] if reference is not None else cached_reference
        if reference_chosen is None:
            raise RuntimeError("the anchor term has no reference log-probs for this batch")
        k2 = anchor_k2(policy_chosen, reference_chosen, chosen_mask)
        weights = anchors.to(k2.device, k2.dtype)
        loss = (k2 * weights).sum() / weights.sum().clamp_min(1)
        mode = "train" if self.model.training else "eval"
        if bool(anchors.any()):
            with torch.no_grad():
                tokens = (chosen_mask * weights[:, None]).sum()
                logratio = ((policy_chosen - reference_chosen) * chosen_mask * weights[:, None]).sum() / tokens
            self._log_hook_metric(mode, "anchor/k2", loss.detach().reshape(1))
            self._log_hook_metric(mode, "anchor/logratio", logratio.reshape(1))
        return loss

    def _token_log_probs(self, records: list[tuple[str, torch.Tensor]],
                         inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-token log-probs of the policy and of the reference (None when precomputed), `[2 * batch, tokens]`
        (chosen rows first), aligned with `completion_mask[..., 1:]` as TRL aligns them."""
        aligned = _aligned(records, inputs, 1 if self.precompute_ref_logps else 2, "DPOTrainer._compute_loss")
        return aligned[0], aligned[1] if len(aligned) == 2 else None

    def _hook_loss(self, records: list[tuple[str, torch.Tensor]], inputs: dict[str, Any],
                   scores: dict[str, torch.Tensor]) -> torch.Tensor:
        """The hook's per-pair loss from the recorded per-token log-probs, summed as TRL sums them."""
        mode = "train" if self.model.training else "eval"
        completion_mask = inputs["completion_mask"]
        logps = self._summed_log_probs(records, inputs)

        if self.loss_hook == "odpo":
            missing = [c for c in SCORE_COLUMNS if c not in scores]
            if missing:
                raise DPORecipesError(
                    f"loss_hook='odpo' needs {missing} in every batch, but this batch has none: the dataset lacks "
                    "the columns (e.g. a dataset passed to evaluate() later), or a custom data_collator dropped "
                    "them. Add the score columns, and use the default collator or wrap yours in "
                    "dpo_recipes.train.hooks.ScoreCollator.")
            s_w, s_l = scores["score_chosen"], scores["score_rejected"]
            losses = odpo_loss(*logps, s_w, s_l, beta=self.beta, alpha=self.odpo_alpha, ratio=self.odpo_ratio)
            with torch.no_grad():
                offset = odpo_offset(s_w, s_l, alpha=self.odpo_alpha, ratio=self.odpo_ratio)
                above = (self.beta * dpo_logratio(*logps).double() > offset).float()
            self._log_hook_metric(mode, "odpo/offset", offset)
            self._log_hook_metric(mode, "odpo/accuracy", above)
        else:
            chosen_mask, rejected_mask = completion_mask.chunk(2, dim=0)
            chosen_lengths, rejected_lengths = chosen_mask.sum(dim=1), rejected_mask.sum(dim=1)
            losses = rdpo_loss(*logps, chosen_lengths, rejected_lengths, beta=self.beta, alpha=self.rdpo_alpha)
            length_diff = (chosen_lengths - rejected_lengths).double()
            self._log_hook_metric(mode, "rdpo/length_diff", length_diff)
            self._log_hook_metric(mode, "rdpo/length_margin", rdpo_length_margin(chosen_lengths.double(),
                                                                                 rejected_lengths.double(),
                                                                                 alpha=self.rdpo_alpha))
        self._log_hook_metric(mode, f"{self.loss_hook}/loss", losses.detach())
        return losses

    def _log_hook_metric(self, mode: str, name: str, values: torch.Tensor) -> None:
        values = values.detach().to(self.accelerator.device, torch.float32)
        metrics = getattr(self, "_metrics", None)  # TRL's private metric store (`internals`)
        if metrics is None:
            warn_once("_metrics", "DPOTrainer._metrics is gone from this TRL version: the hooks' own metrics "
                      "(odpo/*, rdpo/*, anchor/*) are not logged.")
            return
        metrics[mode][name].append(self.accelerator.gather(values).mean().item())

    @contextlib.contextmanager
    def _without_terms(self, names: list[str]):
        """Let TRL compute every loss term except `names` (`sigmoid` when a hook replaces it, `sft` with anchors)."""
        loss_types, loss_weights = self.loss_types, self.loss_weights
        kept = [i for i, name in enumerate(loss_types) if name not in names]
        self.loss_types = [loss_types[i] for i in kept]
        self.loss_weights = [loss_weights[i] for i in kept]
        try:
            yield
        finally:
            self.loss_types, self.loss_weights = loss_types, loss_weights

    @contextlib.contextmanager
    def _record_log_probs(self, model, tag_all: str | None = None):
        """Record `log_probs` of every fused-LM-head forward of the policy (and reference model) during the block.

        The hooks sit on the causal LM that TRL patched with `add_fused_lm_head`, beneath any PEFT, DDP or DeepSpeed
        wrapper, so they see the policy forward and, with PEFT, the adapter-disabled reference forward, in call order.
        `tag_all`: record only `model`'s forwards, under that tag (the reference forward of `compute_ref_log_probs`).
        """
        records: list[tuple[str, torch.Tensor]] = []

        def hook_for(tag):
            def hook(module, args, kwargs, output):
                if kwargs.get("fused_lm_head"):
                    records.append((tag, output.log_probs))
            return hook

        policy = self.accelerator.unwrap_model(model)
        policy = policy.get_base_model() if is_peft_model(policy) else policy
        handles = [policy.register_forward_hook(hook_for(tag_all or "policy"), with_kwargs=True)]
        if self.ref_model is not None and not self.precompute_ref_logps and tag_all is None:
            reference = self.accelerator.unwrap_model(self.ref_model)
            handles.append(reference.register_forward_hook(hook_for("reference"), with_kwargs=True))
        try:
            yield records
        finally:
            for handle in handles:
                handle.remove()


def _aligned(records: list[tuple[str, torch.Tensor]], inputs: dict[str, Any], expected: int,
             where: str) -> list[torch.Tensor]:
    """The recorded fused-head forwards' per-token log-probs, each aligned with `completion_mask[..., 1:]` as TRL
    aligns them (prompt-learning PEFT prepends virtual tokens); `expected` forwards, or this TRL computes otherwise."""
    if len(records) != expected:
        raise RuntimeError(f"expected {expected} fused forward(s) in {where}, saw {len(records)}; this TRL version "
                           "computes the loss differently than TRL 1.16.")
    seq_len = inputs["completion_mask"].size(1) - 1
    return [log_probs[:, -seq_len:] for _, log_probs in records]


def _trl_version() -> str:
    import trl

    return f"trl {trl.__version__}"
