"""Seed ranges for beta and the learning rate: where published recipes and this project's presets put them, with
the source of each."""

# Seed ranges: where published recipes and this project's presets put these values. Outside them a run is not wrong,
# but it is on untested ground: flagged 'risky', never refused.
BETA_RANGES = {
    # DPO's beta for TRL's DPO losses, IPO's tau and KTO's beta: the alignment-handbook's preference-tuning scan
    # varied beta 0.1-0.9 for DPO, IPO and KTO and found 0.01 effective in some settings
    # (alignment-handbook recipes/pref_align_scan/README.md); Zephyr-7B-beta's DPO uses 0.01, the DPO paper 0.1-0.5.
    "dpo": (0.01, 0.9),
    # ORPO's lambda: 0.1 in Hong et al. 2024 and TRL's default, 0.05 in the handbook's zephyr-141b ORPO recipe; the
    # range is a decade either side of 0.1.
    "orpo": (0.01, 1.0),
    # SimPO's beta (CPOTrainer 'simpo'): 2.0-2.5 in the authors' Mistral / Llama-3 configs (loss_presets uses their
    # Llama-3-8B-Instruct 2.5) and 10 in their Gemma-2 config, quoted as read, not re-checked here.
    "simpo": (1.0, 10.0),
}
LR_RANGES = {
    # Full-parameter: the handbook's DPO recipes use 5e-7 (zephyr-7b-beta, zephyr-7b-gemma, starchat2) and 1e-6
    # (smollm2), its ORPO recipe (no SFT stage before it) 5e-6; presets.full-gpu: "full-parameter range 1e-7 to 5e-6".
    "full": (1e-7, 5e-6),
    # LoRA needs ~10x the full-parameter rate (presets.lora-gpu: 5e-6, TRL's LoRA example; the handbook's QLoRA DPO
    # 5e-6). The top: presets.identity-lora-cpu measured 3.5e-4 best and 5e-4 drifting general answers, unless an
    # anchor term holds them ("lora+anchor").
    "lora": (1e-6, 5e-4),
    # With the anchor term: recipes/configs/dpo_lora.yaml runs 7e-4 with anchor_coef 10, general KL 0.036-0.052 over
    # four seeds against 0.145-0.171 at 3.5e-4 without it (docs/default-run.md, "Teaching without damage").
    "lora+anchor": (1e-6, 1e-3),
}
# Loss types whose beta range is SimPO's or ORPO's rather than DPO's.
BETA_FAMILY = {"simpo": "simpo", "orpo": "orpo"}
