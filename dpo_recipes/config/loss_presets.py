"""Named presets for the loss variants, as data: the papers' settings, one reason per value.

`LOSS_PRESETS` holds values for the main DPO recipe: `DPOConfig` fields plus the recipe's own loss-hook fields
(`loss_hook`, `odpo_alpha`, `odpo_ratio`, `rdpo_alpha` of `RecipeArguments`). `config.presets` merges them with
the other presets; YAML and CLI values override a preset.

`VARIANT_PRESETS` holds values for the variant recipes that use another TRL trainer (ORPO, SimPO via CPO, KTO);
each names the config class its values belong to.

The papers trained 1B-8B models with full batches of 32-128; on the embedded 135M model with LoRA, keep their loss
settings (beta, alpha, margins) and let the recipe's learning rate and batch size stand.
"""

from __future__ import annotations

# R-DPO alpha grid, per completion token. Park et al. (2024) tune alpha per dataset together with beta; the grid
# below is the one the SimPO paper (Meng et al. 2024, its table of baseline objectives and search ranges) searched
# when reproducing R-DPO as a baseline, with beta in {0.01, 0.05, 0.1}. We quote the grid from the paper as read,
# not re-checked here (no copy of it is reachable from these machines). The sign (+ alpha * (|y_w| - |y_l|), alpha
# not scaled by beta) matches the R-DPO implementations that cite eq. 9, e.g. sail-sg/oat's length-regularized DPO.
# Alpha multiplies the *token* length difference, so its useful scale depends on how much chosen and rejected
# lengths differ in your data: run `dpo-recipes audit` first. On pairs that differ only in length, R-DPO's optimum is
# DPO's shifted by alpha * gap: beta * h* = log(p / (1 - p)) - alpha * gap for a share p of long wins (tested in
# tests/test_losses.py), so alpha ~ log(p / (1 - p)) / mean gap removes a pure length preference entirely.
RDPO_ALPHA_GRID: tuple[float, ...] = (0.05, 0.1, 0.5, 1.0)

LOSS_PRESETS: dict[str, dict] = {
    "odpo": {
        "loss_hook": "odpo",       # Amini et al. 2024: DPO with a per-pair offset from the score gap
        "odpo_alpha": 1.0,         # the paper's default offset scale (its code: `loss.alpha`, default 1)
        "odpo_ratio": False,       # offset log(s_w - s_l), the form the paper reports; log(s_w / s_l) is an option
        "beta": 0.5,               # the paper's summarization (TL;DR) run; toxicity used 0.05, sentiment 0.7
        # no loss_type: the hook replaces the 'sigmoid' entry of whatever list the base preset has (e.g. the
        # identity run's [sigmoid, sft] becomes [odpo, sft])
    },
    "rdpo": {
        "loss_hook": "rdpo",       # Park et al. 2024, eq. 9: length margin alpha * (|y_w| - |y_l|) inside the sigmoid
        "rdpo_alpha": 0.05,        # smallest value of the grid above. Not "mild" on every data set: with 50-token
                                   # gaps it is about twice the alpha* `dpo-recipes audit` suggests; use that
        "beta": 0.1,               # DPO's usual beta, inside the grid's {0.01, 0.05, 0.1}
    },
    **{
        f"rdpo-alpha-{alpha:g}": {
            "loss_hook": "rdpo",
            "rdpo_alpha": alpha,   # one point of RDPO_ALPHA_GRID, for sweeps: --preset rdpo-alpha-0.1
            "beta": 0.1,
        }
        for alpha in RDPO_ALPHA_GRID
    },
    "ipo": {
        "loss_type": ["ipo"],      # Azar et al. 2023: squared loss towards a fixed margin 1/(2 tau); no saturation
        "beta": 0.1,               # tau; TRL averages IPO's log-ratios per token (as the authors confirmed), so
                                   # beta is not comparable with DPO's: larger tau = smaller target margin
    },
}

VARIANT_PRESETS: dict[str, dict] = {
    "orpo": {
        "config_class": "trl.experimental.orpo.ORPOConfig",
        "beta": 0.1,               # lambda, the odds-ratio weight; Hong et al. 2024 use 0.1 (TRL's default too)
        # (max_length is a training value: it comes from the training preset or config, as for every recipe)
    },
    "simpo": {
        "config_class": "trl.experimental.cpo.CPOConfig",
        "loss_type": "simpo",      # Meng et al. 2024: length-normalized reward, target margin gamma, no reference
        "cpo_alpha": 0.0,          # no behaviour-cloning term: plain SimPO (cpo_alpha > 0 gives CPO-SimPO)
        "beta": 2.5,               # the authors' Llama-3-8B-Instruct config; their base-model runs use 2.0
        "simpo_gamma": 1.375,      # TRL's gamma is absolute: gamma/beta = 0.55 in that config, times beta 2.5
        # (that config's learning rate, 1e-6, is for full fine-tuning: the learning rate comes from the training
        # preset or config, as for every recipe, since LoRA needs a larger one)
    },
    "kto": {
        "config_class": "trl.KTOConfig",
        "beta": 0.1,               # Ethayarajh et al. 2024's default
        "desirable_weight": 1.0,   # pairs unpaired give as many desirable as undesirable rows: lambda_D = lambda_U
        "undesirable_weight": 1.0,  # (re-balance them when desirable:undesirable rows are not 1:1)
    },
}


def variant_defaults(name: str) -> dict:
    """The values of `VARIANT_PRESETS[name]` for its config class (without the `config_class` label)."""
    return {k: v for k, v in VARIANT_PRESETS[name].items() if k != "config_class"}
