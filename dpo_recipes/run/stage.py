"""Where a run is (for the one line a stop prints) and how a recipe ends: its errors as one line (exit 2),
Ctrl-C (130), and a scheduler's SIGTERM/SIGUSR1 (75, after a checkpoint: `dpo_recipes.train.preemption`)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

from accelerate import PartialState

from dpo_recipes.errors import DPORecipesError
from dpo_recipes.train.preemption import EXIT_PREEMPTED, Preempted
from dpo_recipes.train.preemption import handler as preemption_handler
from dpo_recipes.watch.tracking import last_checkpoint


# Where the run is, for the one-line message on Ctrl-C.
_PROGRESS: dict = {"stage": "start", "output_dir": None, "trainer": None}


_TIMELINE: list[tuple[str, float]] = []  # (stage, time.perf_counter() when it began), in order


def set_stage(stage: str, **context) -> None:
    """Note what the recipe is doing now (shown if the user interrupts it, and timed for summary.json)."""
    _PROGRESS["stage"] = stage
    _PROGRESS.update(context)
    _TIMELINE.append((stage, time.perf_counter()))


def seconds_by_stage() -> dict[str, float]:
    """Seconds spent in each stage so far, summed when a stage recurs (the last one counted up to now)."""
    spent: dict[str, float] = {}
    ends = [t for _, t in _TIMELINE[1:]] + [time.perf_counter()]
    for (stage, start), end in zip(_TIMELINE, ends):
        spent[stage] = round(spent.get(stage, 0.0) + end - start, 2)
    return spent


def _interrupt_message() -> str:
    stage, out, trainer = _PROGRESS["stage"], _PROGRESS.get("output_dir"), _PROGRESS.get("trainer")
    where = f"while {stage}"
    if trainer is not None and stage == "training":
        where += f", at step {trainer.state.global_step} of {trainer.state.max_steps}"
    resume = ""
    if out:
        checkpoint = last_checkpoint(out)
        resume = (f"; rerun the same command to resume from {checkpoint}" if checkpoint else
                  "; no checkpoint was saved yet, so a rerun starts from the beginning")
    return f"interrupted {where}{resume}."


def _preempted_message(stopped: Preempted) -> str:
    out, trainer = _PROGRESS.get("output_dir"), _PROGRESS.get("trainer")
    if stopped.step is not None and out:
        total = f" of {trainer.state.max_steps}" if trainer is not None else ""
        checkpoint = Path(out) / f"checkpoint-{stopped.step}"
        return (f"preempted by {stopped.name} at step {stopped.step}{total}: saved {checkpoint}; rerun the same "
                "command to resume from it.")
    return f"preempted by {stopped.name}: {_interrupt_message().removeprefix('interrupted ')}"


def _line(message: str) -> None:
    """One line on stderr, on a line of its own and last even when a progress bar was drawing (Ctrl-C lands mid-bar):
    open bars are closed first, where they stand, so none is redrawn below the line at exit."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        with contextlib.suppress(Exception):
            bar.close()
    tqdm.write(message, file=sys.stderr)
    sys.stderr.flush()


STATUS_FILE = "DPO_RECIPES_STATUS_FILE"  # set by `dpo-recipes train`: the recipe's exit status, which a launcher loses


@contextlib.contextmanager
def recipe_errors():
    """A recipe's user errors and Ctrl-C as one line on stderr: exit status 2, or 130 for an interrupt. SIGTERM and
    SIGUSR1 (a scheduler's preemption, `dpo_recipes.train.preemption`) save a checkpoint at the next step boundary and
    exit with status 75 (EXIT_PREEMPTED). Under `dpo-recipes train` the status is also written to $STATUS_FILE."""
    preemption_handler().install()
    status = 1  # an exception this block does not turn into a line: a bug, with its traceback
    try:
        yield
        status = 0
    except DPORecipesError as exc:
        if os.environ.get("RANK", "0") == "0":  # every process of a launch refuses alike: say it once
            _line(f"error: {exc}")
        status = 2
    except KeyboardInterrupt:
        _second_interrupt_ends_at_once()
        _line(_interrupt_message())
        status = 130
    except Preempted as stopped:
        if PartialState().is_main_process:
            _line(_preempted_message(stopped))
        status = EXIT_PREEMPTED
    except SystemExit as exc:  # argparse's --help (0), or a recipe's own exit
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        raise
    finally:
        _record_status(status)
    if status:
        raise SystemExit(status) from None


def _second_interrupt_ends_at_once() -> None:
    """After the first Ctrl-C, a second one ends the process by the signal itself (status 130 in a shell) instead of
    raising KeyboardInterrupt again inside whatever shutdown code runs then (objects' __del__, atexit handlers), which
    Python can only print as "Exception ignored in ..." tracebacks."""
    with contextlib.suppress(ValueError):  # not the main thread: signals stay as they are
        signal.signal(signal.SIGINT, signal.SIG_DFL)


def _record_status(status: int) -> None:
    path = os.environ.get(STATUS_FILE)
    if path and os.environ.get("RANK", "0") == "0":
        with contextlib.suppress(OSError):
            Path(path).write_text(str(status))
