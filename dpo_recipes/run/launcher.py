"""`dpo-recipes train`: a recipe on one process, or under accelerate's launcher with the recipe's own exit status and
one-line errors kept (torchrun reports any worker failure as its own status 1, with a traceback of the launcher)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from dpo_recipes.errors import DPORecipesError
from dpo_recipes.run.stage import STATUS_FILE
from dpo_recipes.shipped import recipes


def train(recipe_name: str, recipe_flags: list[str], num_processes: int | None = None,
          config_file: str | None = None) -> int:
    """`dpo-recipes train`: the recipe directly, or under accelerate's launcher with the recipe's exit status kept."""
    shipped = recipes()
    recipe = shipped.get(recipe_name.removesuffix(".py")) or Path(recipe_name)
    if not Path(recipe).is_file():
        raise DPORecipesError(f"no recipe {recipe_name!r}: name one of {', '.join(shipped)} or a recipe file.")
    if (num_processes or 1) == 1 and config_file is None:
        return subprocess.run([sys.executable, str(recipe), *recipe_flags]).returncode
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--quiet"]
    launch += ["--num_processes", str(num_processes)] if num_processes else []
    launch += ["--config_file", config_file] if config_file else []
    with tempfile.TemporaryDirectory() as folder:
        status_file = Path(folder) / "status"
        env = {**os.environ, STATUS_FILE: str(status_file),
               # the launcher passes a scheduler's SIGUSR1 to the recipes instead of dying on it
               "TORCHELASTIC_SIGNALS_TO_HANDLE": "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"}
        process = subprocess.Popen([*launch, str(recipe), *recipe_flags], env=env, stderr=subprocess.PIPE)
        held = _stderr_until_launcher_report(process)
        process.wait()
        recorded = status_file.read_text().strip() if status_file.is_file() else ""
    if not recorded.isdigit() or int(recorded) not in (0, 2, 75, 130):  # not one of the recipe's own endings
        sys.stderr.buffer.write(held)  # a crash: the launcher's report is the traceback to read
        return process.returncode
    return int(recorded)


LAUNCHER_REPORT = b"torch/distributed/elastic/multiprocessing/api.py"  # where torchrun's failure report begins


def _stderr_until_launcher_report(process) -> bytes:
    """Pass the processes' stderr through as it comes (progress bars included) until the launcher starts its own
    failure report; return that report, held back."""
    pending, held = b"", b""
    while chunk := os.read(process.stderr.fileno(), 65536):
        if held:
            held += chunk
            continue
        pending += chunk
        at = pending.find(LAUNCHER_REPORT)
        if at >= 0:
            start = pending.rfind(b"\n", 0, at) + 1
            sys.stderr.buffer.write(pending[:start])
            held, pending = pending[start:], b""
        else:  # all but a partial last line (the marker may be split across reads), unless it redraws a bar
            tail = pending[pending.rfind(b"\n") + 1:]
            cut = len(pending) if b"\r" in tail else len(pending) - len(tail)
            sys.stderr.buffer.write(pending[:cut])
            pending = pending[cut:]
        sys.stderr.buffer.flush()
    sys.stderr.buffer.write(pending)
    return held
