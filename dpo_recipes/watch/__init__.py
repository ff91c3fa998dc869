"""Watching a run: the health monitor's alarms, held-out answers before and after, W&B tracking, plots."""
