"""The files dpo-recipes ships next to its code (recipes, their YAML configs, the default run's data, the accelerate
configs), wherever the package is: a checkout (the repository's own folders) or an installed wheel (the same tree under
`dpo_recipes/bundle/`), and how a recipe YAML's paths resolve."""

from __future__ import annotations

from pathlib import Path

# YAML keys that name files or folders to read. A relative one resolves against the YAML's own folder when it is there
# (a copied recipe's config finds its data from any working directory); output_dir and other places a run writes stay
# relative to the working directory, where the command runs.
INPUT_PATH_SUFFIXES = ("_file", "_name", "_path", "_or_path")
NOT_INPUT_PATHS = frozenset({"run_name", "hub_model_id", "output_dir", "logging_dir", "output_file"})
FOLDERS = ("recipes", "data", "accelerate_configs")


def root() -> Path:
    """The folder holding recipes/, data/ and accelerate_configs/: the checkout, or the installed bundle."""
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "recipes" / "dpo_lora.py").is_file() and (checkout / "pyproject.toml").is_file():
        return checkout
    return Path(__file__).resolve().parent / "bundle"


def recipes() -> dict[str, Path]:
    """Every shipped recipe by name ('dpo_lora' -> .../recipes/dpo_lora.py)."""
    return {p.stem: p for p in sorted((root() / "recipes").glob("*.py"))}


def default_config(recipe_file: str | Path, name: str) -> Path:
    """A recipe's default YAML: `configs/NAME` beside the recipe file (a copy keeps its own), else the shipped one."""
    beside = Path(recipe_file).resolve().parent / "configs" / name
    return beside if beside.is_file() else root() / "recipes" / "configs" / name


def resolve_yaml_paths(config: dict, path: str | Path) -> dict:
    """`config` with each relative input path that exists beside the YAML file made absolute (see
    INPUT_PATH_SUFFIXES); any other value (a hub id, a path relative to the working directory) is left as written."""
    folder = Path(path).resolve().parent
    resolved = dict(config)
    for key, value in config.items():
        if (isinstance(value, str) and value and key.endswith(INPUT_PATH_SUFFIXES) and key not in NOT_INPUT_PATHS
                and not Path(value).is_absolute() and (folder / value).exists()):
            resolved[key] = str((folder / value).resolve())
    return resolved


def summary_line(recipe: Path) -> str:
    """The first line of a recipe's docstring."""
    import ast

    doc = ast.get_docstring(ast.parse(recipe.read_text(encoding="utf-8"))) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def configs_of(recipe: Path) -> list[Path]:
    """The shipped YAMLs made for a recipe: configs/NAME.yaml and configs/NAME_*.yaml."""
    folder = recipe.parent / "configs"
    return sorted(p for p in folder.glob("*.yaml") if p.stem == recipe.stem or p.stem.startswith(recipe.stem + "_"))


def _recipes_it_imports(recipe: Path) -> list[Path]:
    """Other shipped recipes this one imports as modules (dpo_full.py runs dpo_lora.py's stages)."""
    import re

    shipped = recipes()
    names = re.findall(r"^\s*import (\w+)", recipe.read_text(encoding="utf-8"), flags=re.M)
    return [shipped[n] for n in names if n in shipped and n != recipe.stem]


def _rewrite_paths(text: str, original: Path) -> str:
    """A YAML's text with each input path that resolves against its original folder written as an absolute path (the
    copy lives elsewhere); every other line, comments included, as it was."""
    import re

    import yaml

    values = yaml.safe_load(text) or {}
    resolved = resolve_yaml_paths(values, original)
    out = []
    for line in text.splitlines(keepends=True):
        match = re.match(r"^(\w+):(\s*)(\S+)", line)
        if match and resolved.get(match.group(1)) != values.get(match.group(1)):
            line = line[:match.start(3)] + resolved[match.group(1)] + line[match.end(3):]
        out.append(line)
    return "".join(out)


def copy_recipe(name: str, dest: str | Path, force: bool = False) -> list[Path]:
    """Copy a shipped recipe (and the recipes it imports) into DEST, its YAMLs into DEST/configs with their data paths
    made absolute, so the copy runs from any folder. Refuses to overwrite a file unless `force`. Returns the files."""
    from dpo_recipes.errors import DPORecipesError

    shipped = recipes()
    if name.removesuffix(".py") not in shipped:
        raise DPORecipesError(f"no recipe {name!r}; `dpo-recipes ls` lists them: {', '.join(shipped)}.")
    recipe = shipped[name.removesuffix(".py")]
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise DPORecipesError(f"{dest} is a file; pass a folder to copy the recipe into.")
    plan = [(p, dest / p.name) for p in [recipe, *_recipes_it_imports(recipe)]]
    plan += [(c, dest / "configs" / c.name) for r in [recipe, *_recipes_it_imports(recipe)] for c in configs_of(r)]
    existing = [str(target) for _, target in plan if target.exists()]
    if existing and not force:
        raise DPORecipesError(f"{', '.join(existing)} already exist(s); pass --force to overwrite, or another DEST.")
    for source, target in plan:
        target.parent.mkdir(parents=True, exist_ok=True)
        text = source.read_text(encoding="utf-8")
        target.write_text(_rewrite_paths(text, source) if source.suffix == ".yaml" else text, encoding="utf-8")
    return [target for _, target in plan]


def listing() -> str:
    """`dpo-recipes ls`: each recipe, what it does, and its YAMLs."""
    lines = [f"recipes in {root() / 'recipes'}:"]
    for name, path in recipes().items():
        configs = ", ".join(f"configs/{c.name}" for c in configs_of(path)) or "(no YAML of its own)"
        lines += [f"  {name:<14} {summary_line(path)}", f"  {'':<14} {configs}"]
    return "\n".join(lines + ["copy one with: dpo-recipes cp RECIPE [DEST]"])


def copy_report(copied: list[Path]) -> str:
    """What `dpo-recipes cp` copied, how to run it and what to edit."""
    lines = ["copied:", *(f"  {p}" for p in copied), f"run it:   python {copied[0]}"]
    config = next((p for p in copied if p.suffix == ".yaml"), None)
    if config is not None:
        lines[-1] += f"   (values: {config}, then the preset it names, then the command line)"
        lines.append(f"edit:     {config}: dataset_name (your pairs), model_name_or_path, learning_rate, max_steps, ...")
    return "\n".join(lines)
