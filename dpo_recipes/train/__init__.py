"""Training: TRL's DPOTrainer with the loss hooks TRL lacks, the speed levers, and the guards around each step."""
