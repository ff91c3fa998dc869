"""Preemption-safe runs: SIGTERM or SIGUSR1 saves a checkpoint at the next step boundary and stops with exit status 75.

Slurm sends SIGTERM on preemption and at the time limit (and SIGUSR1 some time before, with `--signal=USR1@120`);
Kubernetes and most schedulers send SIGTERM before they kill. The recipes then:

- during training: finish the optimizer step under way, write a checkpoint there (every process, at the same step:
  the processes agree on the step through one small all-reduce per step), and stop;
- before or after training (loading, answering the evaluation prompts, saving): stop at once; the output folder's
  plan (`dpo_recipes.run`) resumes from the last checkpoint on the next run;
- write one line saying where the run stopped and how to resume, and exit with `EXIT_PREEMPTED` (75, EX_TEMPFAIL from
  sysexits.h: "try again later"), so a job script can tell a preempted run (rerun it, e.g. `scontrol requeue`) from a
  failed one (2) or an interrupted one (130).

A second signal exits at once (status 128 + signal number), unless it comes within `DUPLICATE_WINDOW` seconds of the
first: a launcher such as `accelerate launch` (torchrun) forwards the SIGTERM it receives to its workers, which Slurm
also signals directly, so each worker sees the same preemption twice. Rerunning the same command resumes from the saved
checkpoint to the adapter an uninterrupted run ends with.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import torch
from transformers import TrainerCallback

EXIT_PREEMPTED = 75
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
DUPLICATE_WINDOW = 2.0  # seconds within which a second signal is taken for the first one, forwarded


class Preempted(Exception):
    """The run was asked to stop by a scheduler's signal; `step` is the step a checkpoint was saved at, if any."""

    def __init__(self, signum: int, step: int | None = None):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.step = step

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


class PreemptionHandler(TrainerCallback):
    """The signal handlers and the callback that turns a received signal into a checkpoint at the step boundary.

    One per process (`handler()`); `install()` sets the signal handlers (main thread only), `attach(trainer)` adds the
    callback to a trainer. `may_save` (a callable, or None) can veto the checkpoint: a step whose update was not clean
    (the non-finite guard) is never saved.
    """

    def __init__(self):
        self.signum: int | None = None
        self.received_at = 0.0
        self.training = False
        self.trainer = None
        self.saved_step: int | None = None
        self.may_save = None
        self._installed = False

    # --- signals -----------------------------------------------------------------------------------------------------
    def install(self) -> None:
        if self._installed or threading.current_thread() is not threading.main_thread():
            return
        for signum in SIGNALS:
            signal.signal(signum, self._on_signal)
        self._installed = True

    def _on_signal(self, signum, frame) -> None:
        now = time.monotonic()
        if self.signum is None:
            self.signum, self.received_at = signum, now
            if not self.training:
                raise Preempted(signum)
            print(f"\n{signal.Signals(signum).name} received: saving a checkpoint at the end of this step, then "
                  "stopping (send it again to exit at once).", file=sys.stderr, flush=True)
            return
        if now - self.received_at < DUPLICATE_WINDOW:
            return  # the same preemption, forwarded by a launcher
        print(f"\n{signal.Signals(signum).name} received again: exiting now, without a checkpoint.", file=sys.stderr,
              flush=True)
        os._exit(128 + signum)

    # --- the trainer -------------------------------------------------------------------------------------------------
    def attach(self, trainer) -> PreemptionHandler:
        self.trainer = trainer
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        return self

    def on_train_begin(self, args, state, control, **kwargs):
        self.training = True
        if self.signum is not None:  # arrived while the trainer was being built: stop before the first step
            raise Preempted(self.signum)

    def on_train_end(self, args, state, control, **kwargs):
        self.training = False

    def on_step_end(self, args, state, control, **kwargs):
        if not self._any_process_signalled():
            return
        control.should_training_stop = True
        control.should_evaluate = False
        if self.may_save is None or self.may_save():
            control.should_save = True
            self.saved_step = state.global_step

    def _any_process_signalled(self) -> bool:
        """Whether any process has received the signal: every process takes the same decision at the same step."""
        accelerator = getattr(self.trainer, "accelerator", None)
        if accelerator is None or accelerator.num_processes <= 1:
            return self.signum is not None
        flag = torch.tensor([float(self.signum or 0)], device=accelerator.device)
        signum = int(accelerator.reduce(flag, "max").item())
        if signum and self.signum is None:
            self.signum, self.received_at = signum, time.monotonic()
        return bool(signum)

    def stopped(self) -> Preempted | None:
        """After training: the preemption to report (None when the run was not asked to stop)."""
        return Preempted(self.signum, self.saved_step) if self.signum is not None else None


_HANDLER = PreemptionHandler()


def handler() -> PreemptionHandler:
    """This process's preemption handler."""
    return _HANDLER
