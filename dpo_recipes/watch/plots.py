"""PNG plots of a run's curves in OUTPUT_DIR/plots/, for people who would rather look than read.

From what a run writes into its output_dir:
- metrics.jsonl (Trainer's log_history): loss, rewards chosen/rejected, margins, accuracies, logps chosen/rejected,
  the loss hook's own metrics (`odpo/*`, `rdpo/*`: hook.png) and other recipes' loss terms (ORPO's `nll_loss`,
  `log_odds_*`, KTO's `kl`: terms.png). Held-out evaluation logs (`eval_loss`, `eval_rewards/margins`, ...) are
  markers on the axes of their training curve.
- eval_answers.jsonl: mean answer length before and after training, in words, per prompt kind (lengths.png).
- overview.png: the main panels in one small grid (~100 KB), to commit next to a README.
A panel without data is skipped and named in the log; a missing key never fails; NaN values are drawn as gaps.

`dpo-recipes plot RUN_DIR [RUN_DIR ...]` redraws them; several runs are overlaid, one line per run. Each PNG is
written atomically. matplotlib is imported inside functions: the CLI imports this module to build its parser.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import textwrap
from pathlib import Path

from dpo_recipes.errors import DPORecipesError
from dpo_recipes.jsonio import write_file_atomic
from dpo_recipes.watch.run_logs import load_run

logger = logging.getLogger(__name__)

# Panel (file stem) -> (title, y label with unit, metric keys). "hook" and "terms" get one small axes per key found.
PANELS = {
    "loss": ("Loss", "loss (nats)", ("loss",)),
    "rewards": ("Implicit rewards", "reward (nats, scaled by β)", ("rewards/chosen", "rewards/rejected")),
    "margins": ("Reward margin", "chosen − rejected reward (nats, scaled by β)", ("rewards/margins",)),
    "accuracies": ("Reward accuracy", "share of pairs: chosen reward > rejected", ("rewards/accuracies",)),
    "logps": ("Log-probabilities", "completion log-prob, token sum (nats)", ("logps/chosen", "logps/rejected")),
    "hook": ("Loss hook metrics", "", ()),  # every odpo/* and rdpo/* key
    "terms": ("Recipe loss terms", "", ("nll_loss", "log_odds_ratio", "log_odds_chosen", "kl", "aux_loss")),
    "lengths": ("Held-out answer length", "mean answer length (words)", ()),
}
OVERVIEW = ("loss", "margins", "accuracies", "rewards", "logps", "lengths")
HOOK_PREFIXES = ("odpo/", "rdpo/")
UNITS = {"odpo/offset": "nats", "odpo/accuracy": "share of pairs", "odpo/loss": "nats", "rdpo/length_diff": "tokens",
         "rdpo/length_margin": "nats", "rdpo/loss": "nats", "nll_loss": "nats per token", "log_odds_ratio": "nats",
         "log_odds_chosen": "nats", "kl": "nats"}
# ORPO and SimPO (CPO) log rewards as beta x the policy's mean token log-prob, with no reference model, and
# per-token mean log-probs: their panels say so.
NO_REFERENCE_RECIPES = ("orpo", "simpo")
NO_REFERENCE_PANELS = {
    "rewards": ("Rewards (no reference model)", "β × mean token log-prob (nats)"),
    "margins": ("Reward margin (no reference model)", "chosen − rejected, β × mean token log-prob (nats)"),
    "logps": ("Log-probabilities", "completion log-prob, mean per token (nats)"),
}
REFERENCE_LINES = {"rewards": 0.0, "margins": 0.0, "accuracies": 0.5}  # zero reward; chance accuracy
COLORS = {"chosen": "tab:green", "rejected": "tab:red"}
LINESTYLES = ("-", "--", "-.", ":")





def panel_text(name: str, runs: list[dict]) -> tuple[str, str]:
    """(title, y label) of panel `name` for these runs: the no-reference wording when every run is ORPO or SimPO, a
    note that the unit differs when only some are."""
    title, ylabel, _ = PANELS[name]
    if name not in NO_REFERENCE_PANELS:
        return title, ylabel
    no_reference = [r.get("recipe") in NO_REFERENCE_RECIPES for r in runs]
    if all(no_reference):
        return NO_REFERENCE_PANELS[name]
    if any(no_reference):
        return title, ylabel + "; ORPO/SimPO runs: per-token mean, no reference"
    return title, ylabel


# --- what each panel draws -----------------------------------------------------------------------------------------
def _finite(values) -> bool:
    return any(math.isfinite(v) for v in values)


def _evals(found: dict) -> dict[str, list[tuple[str, str]]]:
    """Training key -> its eval series as (name, legend tag): `eval_KEY` ('eval'), and `eval_NAME_KEY` ('eval NAME')
    for each of several named eval sets; a name is matched to the longest key it ends with."""
    known = {k for k in found if not k.startswith("eval_")} | {k for p in PANELS.values() for k in p[2]}
    out: dict[str, list[tuple[str, str]]] = {}
    for name in (k for k in found if k.startswith("eval_")):
        rest = name[len("eval_"):]
        if rest in known:
            out.setdefault(rest, []).append((name, "eval"))
            continue
        ends = [k for k in known if rest.endswith(f"_{k}")]
        if ends:
            key = max(ends, key=len)
            out.setdefault(key, []).append((name, f"eval {rest[:-len(key) - 1]}"))
    return out


def _has(run: dict, key: str) -> bool:
    """Whether `run` logged a finite value of `key` in training or in any eval."""
    data = run["series"]
    return any(_finite(data[name][1]) for name in [key, *(n for n, _ in _evals(data).get(key, []))] if name in data)


def panel_keys(name: str, runs: list[dict]) -> list[str]:
    """The metric keys (or, for 'lengths', prompt kinds) panel `name` would draw for `runs`; [] when none has data."""
    if name == "lengths":
        return list(dict.fromkeys(kind for run in runs for kind in run["lengths"]))
    if name == "hook":
        candidates = sorted({k.removeprefix("eval_") for run in runs for k in run["series"]
                             if k.removeprefix("eval_").startswith(HOOK_PREFIXES)})
    else:
        candidates = PANELS[name][2]
    return [key for key in candidates if any(_has(run, key) for run in runs)]


def _draw(ax, name: str, keys: list[str], runs: list[dict], ylabel: str, small: bool = False) -> None:
    """Draw panel `name`'s `keys` on `ax`: one colour per key for one run, one colour per run when overlaid."""
    overlay = len(runs) > 1
    if name == "lengths":
        _draw_lengths(ax, keys, runs, overlay)
    else:
        for r, run in enumerate(runs):
            data, evals = run["series"], _evals(run["series"])
            prefix = f"{run['label']}: " if overlay else ""
            for k, key in enumerate(keys):
                color = f"C{r}" if overlay else COLORS.get(key.rsplit("/", 1)[-1], f"C{k}")
                style = LINESTYLES[k % len(LINESTYLES)] if overlay else "-"
                if key in data and _finite(data[key][1]):
                    ax.plot(*data[key], color=color, linestyle=style, marker="." if len(data[key][0]) <= 100 else None,
                            markersize=4, label=prefix + key)  # dots only where they can be told apart
                for eval_name, tag in evals.get(key, []):
                    if _finite(data[eval_name][1]):
                        ax.plot(*data[eval_name], color=color, linestyle=":", linewidth=1, marker="o", markersize=5,
                                markerfacecolor="white", label=f"{prefix}{tag} {key}")
        ax.set_xlabel("optimizer step", fontsize=8 if small else None)
        if name in REFERENCE_LINES:
            ax.axhline(REFERENCE_LINES[name], color="0.75", linewidth=0.8, zorder=0)
        if name == "accuracies":
            ax.set_ylim(-0.03, 1.03)
    ax.set_ylabel(ylabel, fontsize=8 if small else None)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6 if small else 8)
    if small:
        ax.tick_params(labelsize=7)


def _draw_lengths(ax, kinds: list[str], runs: list[dict], overlay: bool) -> None:
    """Before -> after mean words, one line per prompt kind (and per run when overlaid)."""
    for r, run in enumerate(runs):
        for k, kind in enumerate(kinds):
            if kind not in run["lengths"]:
                continue
            before, after = run["lengths"][kind]
            color = f"C{r}" if overlay else f"C{k}"
            style = LINESTYLES[k % len(LINESTYLES)] if overlay else "-"
            label = f"{run['label']}: {kind}" if overlay else kind
            ax.plot([0, 1], [before, after], color=color, linestyle=style, marker="o", label=label)
            for x, y in ((0, before), (1, after)):
                ax.annotate(f"{y:.0f}", (x, y), textcoords="offset points", xytext=(8 if x else -8, 0),
                            ha="left" if x else "right", va="center", fontsize=7, color=color)
    ax.set_xticks([0, 1], ["before training", "after training"])
    ax.set_xlim(-0.4, 1.4)
    ax.set_ylim(bottom=0)


def _grid(cells: int, cols: int, width: float, height: float):
    """A Figure with `cells` axes (inches per cell), from matplotlib's object API: no pyplot state, so no figure
    to close and nothing kept once it is dropped."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise DPORecipesError("plots need matplotlib: pip install 'matplotlib>=3.8'.") from None
    cols = min(cells, cols)
    rows = math.ceil(cells / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    for ax in axes[cells:]:
        ax.set_visible(False)
    return fig, axes[:cells]


def panel_figure(name: str, runs: list[dict]):
    """The Figure of panel `name` (a PANELS key) for `runs` (from `load_run`); None when none of them has its data.

    'hook' and 'terms' get one axes per metric, each with its own unit."""
    keys = panel_keys(name, runs)
    if not keys:
        return None
    title, ylabel = panel_text(name, runs)
    if name in ("hook", "terms"):
        fig, axes = _grid(len(keys), 2, 5.2, 3.4)
        for ax, key in zip(axes, keys):
            _draw(ax, name, [key], runs, f"{key} ({UNITS[key]})" if key in UNITS else key)
    else:
        fig, axes = _grid(1, 1, 6.4, 4.0)
        _draw(axes[0], name, keys, runs, ylabel)
    fig.suptitle(f"{title}\n{_titles(runs)}", fontsize=9)
    return fig


def overview_figure(runs: list[dict]):
    """The main panels (OVERVIEW) that have data, in one grid of at most 3 columns; None when none has."""
    panels = [(name, keys) for name in OVERVIEW if (keys := panel_keys(name, runs))]
    if not panels:
        return None
    fig, axes = _grid(len(panels), 3, 4.0, 3.1)
    for ax, (name, keys) in zip(axes, panels):
        title, ylabel = panel_text(name, runs)
        _draw(ax, name, keys, runs, ylabel, small=True)
        ax.set_title(title, fontsize=9)
    fig.suptitle(_titles(runs), fontsize=10)
    return fig


def _titles(runs: list[dict]) -> str:
    text = runs[0]["title"] if len(runs) == 1 else f"{len(runs)} runs: {', '.join(r['label'] for r in runs)}"
    return textwrap.shorten(text, 110, placeholder=" ...")


# --- writing -------------------------------------------------------------------------------------------------------
def _save(fig, path: Path, dpi: int) -> Path:
    """PNG `path`, atomically: complete or absent, never half-written."""
    try:
        return write_file_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
    except OSError as exc:
        raise DPORecipesError(f"{path}: cannot write the plot ({exc.strerror or exc}); pass --out DIR.") from None
    finally:
        fig.clear()


def draw_runs(runs: list[dict], out_dir: str | os.PathLike) -> tuple[list[Path], list[str]]:
    """Write every panel with data, then overview.png, into `out_dir`. Returns (PNGs written, panels skipped and
    why)."""
    out, written = Path(out_dir), []
    skipped = [note for run in runs for note in run["notes"]]
    for name in PANELS:
        fig = panel_figure(name, runs)
        if fig is None:
            reasons = {"hook": "no odpo/* or rdpo/* metrics: no --loss_hook", "lengths": "no eval_answers.jsonl"}
            if not (name == "lengths" and any(note.startswith("lengths") for note in skipped)):
                skipped.append(f"{name} ({reasons.get(name) or 'no ' + ', '.join(PANELS[name][2]) + ' logged'})")
            continue
        written.append(_save(fig, out / f"{name}.png", dpi=100))
    fig = overview_figure(runs)
    if fig is not None:
        written.append(_save(fig, out / "overview.png", dpi=80))  # ~100 KB: small enough to commit
    return written, skipped


def run_labels(run_dirs: list[str | os.PathLike]) -> list[str]:
    """Folder names, with as many parent folders as it takes to tell two apart; ' (2)' for a folder given twice."""
    parts = [Path(os.path.abspath(d)).parts[1:] or ("/",) for d in run_dirs]
    depth = [1] * len(parts)
    while True:
        labels = ["/".join(p[-n:]) for p, n in zip(parts, depth)]
        longer = [i for i, label in enumerate(labels) if labels.count(label) > 1 and depth[i] < len(parts[i])]
        if not longer:
            break
        for i in longer:
            depth[i] += 1
    return [label if labels[:i].count(label) == 0 else f"{label} ({labels[:i].count(label) + 1})"
            for i, label in enumerate(labels)]


def default_out_dir(run_dirs: list[str | os.PathLike]) -> Path:
    """RUN_DIR/plots for one run. For several: `plots-compare-A-vs-B` in their common parent folder, named after the
    runs so another comparison never mixes its PNGs with this one's (long names are shortened with a hash)."""
    if len(run_dirs) == 1:
        return Path(run_dirs[0]) / "plots"
    paths = [os.path.abspath(d) for d in run_dirs]
    parent = Path(os.path.commonpath(paths))
    if str(parent) in paths:  # a run nested in another: not inside that run's folder
        parent = parent.parent
    name = "-vs-".join(label.replace("/", "_").replace(" ", "") for label in run_labels(run_dirs))
    if len(name) > 60:
        name = f"{name[:40]}-and-more-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return parent / f"plots-compare-{name}"


def _plot(run_dirs: list[str | os.PathLike], out_dir) -> tuple[list[Path], list[str]]:
    """Read every folder (labelled by `run_labels`) before drawing anything, then draw them into `out_dir` (None:
    `default_out_dir`, where PNGs of panels skipped this time are removed)."""
    if not run_dirs:
        raise DPORecipesError("no run folder given: pass a run's output_dir.")
    runs = [load_run(d, label) for d, label in zip(run_dirs, run_labels(run_dirs))]
    out = Path(out_dir) if out_dir is not None else default_out_dir(run_dirs)
    written, skipped = draw_runs(runs, out)
    if out_dir is None:  # the default folder is ours: a panel skipped now must not show an earlier drawing
        for stale in {out / f"{name}.png" for name in [*PANELS, "overview"]} - set(written):
            stale.unlink(missing_ok=True)
    return written, skipped


def plot_runs(run_dirs: list[str | os.PathLike], out_dir: str | os.PathLike | None = None) -> list[Path]:
    """Overlay several runs, one line per run labelled by its folder, into `out_dir` (None: `default_out_dir`).
    Returns the PNGs written; skipped panels are logged. Raises DPORecipesError for a folder without metrics.jsonl."""
    written, skipped = _plot(list(run_dirs), out_dir)
    if skipped:
        logger.info("plots skipped: %s", "; ".join(skipped))
    return written


def plot_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> list[Path]:
    """Draw one run's panels into `out_dir` (default RUN_DIR/plots). Returns the PNGs written; skipped panels are
    logged. Raises DPORecipesError when RUN_DIR has no readable metrics.jsonl."""
    return plot_runs([run_dir], out_dir)


# --- `dpo-recipes plot` --------------------------------------------------------------------------------------------
def add_arguments(parser) -> None:
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="a run's output_dir (holds metrics.jsonl); "
                        "several are overlaid, one line per run")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="folder for the PNGs (default: RUN_DIR/plots for one run; for several, "
                             "plots-compare-A-vs-B in their common parent folder)")


def run(args) -> int:
    """Print each PNG written, then the panels skipped and why."""
    written, skipped = _plot(args.run_dirs, args.out)
    for path in written:
        print(path)
    if skipped:
        print(f"skipped: {'; '.join(skipped)}")
    if not written:
        print("no plots written: metrics.jsonl has no curve to draw")
    return 0
