"""A grid of models x interventions x tasks through lm-eval's Python API, resumable.

Each (model, intervention) cell runs all tasks in one `simple_evaluate` with samples logged and
keeps its files in `<output>/<model>/<intervention>/` in the layout `lm_eval --output_path
--log_samples` writes, so `qk-ablate report` and `gate` read cells like any run. A cell counts as
finished only once its `cell.json` marker is written, after its results; a restarted sweep skips
finished cells whose settings are unchanged and redoes any other (a half-written one is cleared
first). Every intervention is validated before the first model loads.

Config (YAML)::

    name: demo
    output: runs/demo                 # cells go here
    leaderboard: results/leaderboard.md
    models:
      - pretrained: smollm2-135m       # plus any HFLM argument: dtype, max_length, ...
    interventions:                     # name -> qk_ablated arguments
      baseline: {}
      massive: {ablate: massive}
      int4_protect: {quant: int4, protect: massive}
      control: {ablate: nonmassive, seeds: 0-4}   # one cell per seed; the report adds a pooled row
    tasks: [passkey_1k, city_facts]
    limit: 30                          # optional: documents per task
    batch_size: 4
    device: auto                       # cuda when available, else cpu
    metadata: {imdb_path: data/imdb.csv}
    include_path: my_tasks             # optional: folder(s) of your own task YAMLs
    kinds: {my_facts: parametric}      # optional: the kind of each of your own tasks, for the report
    profile: {lengths: [1k, 2k], samples: 10}   # optional: `qk-ablate profile` of each model too
    engine: hf                         # or vllm: qk_ablated_vllm (run it from the vLLM environment)
    baseline_model: smollm2-135m       # optional: compare every model with this one's baseline (checkpoints vs base)

With `profile`, each model is also profiled (M of Q/K/V pre and post RoPE, `source` ctxqa by
default, `lam` 5) into `<output>/<model>/profile/`, before its cells run; a profile with the same
settings already there is kept.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path
from typing import Any

from qk_ablate.core.spec import InterventionSpec
from qk_ablate.engines import ENGINES, engine
from qk_ablate.errors import QKAblateError
from qk_ablate.models.loading import auto_device
from qk_ablate.stats.seeds import expand_seeds
from qk_ablate.task_data.catalogue import KINDS, PROFILE_SOURCES, check_kind
from qk_ablate.task_data.lengths import parse_length

_KEYS = {
    "name",
    "output",
    "leaderboard",
    "models",
    "interventions",
    "tasks",
    "limit",
    "batch_size",
    "device",
    "metadata",
    "include_path",
    "kinds",
    "profile",
    "engine",
    "baseline_model",
}
_PROFILE_KEYS = {"lengths", "samples", "source", "lam"}
MARKER = "cell.json"


@dataclass(frozen=True)
class ProfileSettings:
    lengths: tuple[int, ...]
    samples: int = 10
    source: str = "ctxqa"
    lam: float = 5.0

    def matches(self, summary: dict[str, Any]) -> bool:
        """Whether a saved profile.json was made with these settings."""
        return (
            summary.get("lengths") == list(self.lengths)
            and summary.get("samples_per_length") == self.samples
            and summary.get("source") == self.source
            and summary.get("lam") == self.lam
        )


def _profile_settings(raw: Any, path: str | Path) -> ProfileSettings | None:
    if raw is None:
        return None
    where = f"sweep config '{path}', profile"
    if not isinstance(raw, dict) or "lengths" not in raw:
        raise QKAblateError(f"{where}: give a mapping with lengths, e.g. profile: {{lengths: [1k, 2k], samples: 10}}")
    unknown = sorted(set(raw) - _PROFILE_KEYS)
    if unknown:
        raise QKAblateError(f"{where}: unknown key '{unknown[0]}'; valid keys: {', '.join(sorted(_PROFILE_KEYS))}")
    lengths = raw["lengths"]
    parts = lengths.split(",") if isinstance(lengths, str) else lengths if isinstance(lengths, list) else [lengths]
    try:
        parsed = tuple(sorted({parse_length(str(part).strip()) for part in parts if str(part).strip()}))
    except QKAblateError as exc:
        raise QKAblateError(f"{where}: {exc}") from None
    samples, source, lam = raw.get("samples", 10), raw.get("source", "ctxqa"), raw.get("lam", 5.0)
    if not parsed:
        raise QKAblateError(f"{where}: lengths names no length")
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise QKAblateError(f"{where}: samples must be a whole number >= 1, got {samples!r}")
    if source not in PROFILE_SOURCES:
        raise QKAblateError(f"{where}: source must be one of {', '.join(PROFILE_SOURCES)}, got {source!r}")
    if not isinstance(lam, (int, float)) or isinstance(lam, bool) or lam <= 0:
        raise QKAblateError(f"{where}: lam must be a number > 0, got {lam!r}")
    return ProfileSettings(parsed, samples, source, float(lam))


@dataclass(frozen=True)
class SweepConfig:
    name: str
    output: Path
    leaderboard: Path | None
    models: list[dict[str, Any]]
    interventions: dict[str, InterventionSpec]
    tasks: list[str]
    limit: int | None = None
    batch_size: int | str = 4
    device: str = "auto"
    metadata: dict[str, Any] = field(default_factory=dict)
    include_path: list[str] = field(default_factory=list)
    kinds: dict[str, str] = field(default_factory=dict)
    profile: ProfileSettings | None = None
    source: Path | None = None
    engine: str = "hf"  # or "vllm": qk_ablated_vllm, in the vLLM environment
    baseline_model: str | None = None  # every model is compared with this model's baseline cell


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "model"


def load_config(path: str | Path) -> SweepConfig:
    """Parse and validate a sweep YAML; every problem is one readable line."""
    import yaml

    file = Path(path)
    if not file.is_file():
        raise QKAblateError(f"sweep config '{path}' does not exist")
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise QKAblateError(f"sweep config '{path}' is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise QKAblateError(f"sweep config '{path}' must be a mapping with models, interventions and tasks")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise QKAblateError(
            f"sweep config '{path}': unknown key '{unknown[0]}'; valid keys: {', '.join(sorted(_KEYS))}"
        )
    models = raw.get("models") or []
    if not isinstance(models, list) or not models or not all(isinstance(m, dict) for m in models):
        raise QKAblateError(f"sweep config '{path}': 'models' must be a list of mappings with 'pretrained'")
    for number, model in enumerate(models, 1):
        if not model.get("pretrained"):
            near = get_close_matches("pretrained", [str(k) for k in model], n=1, cutoff=0.6)
            hint = (
                f"'{near[0]}' is not a model argument; did you mean 'pretrained'?"
                if near
                else "add pretrained: <model>"
            )
            raise QKAblateError(f"sweep config '{path}': model {number} has no 'pretrained'; {hint}")
    interventions = raw.get("interventions") or {}
    if not isinstance(interventions, dict) or not interventions:
        raise QKAblateError(f"sweep config '{path}': 'interventions' must map names to qk_ablated arguments")
    specs = {}
    for name, args in interventions.items():
        try:
            specs.update(expand_seeds(str(name), dict(args or {})))
        except QKAblateError as exc:
            raise QKAblateError(f"sweep config '{path}', intervention '{name}': {exc}") from None
    tasks = raw.get("tasks") or []
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    if not tasks:
        raise QKAblateError(f"sweep config '{path}': 'tasks' names no task")
    limit = raw.get("limit")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise QKAblateError(f"sweep config '{path}': 'limit' must be a whole number >= 1, got {limit!r}")
    include = raw.get("include_path") or []
    include = [include] if isinstance(include, str) else [str(p) for p in include]
    for folder in include:
        if not Path(folder).is_dir():
            raise QKAblateError(f"sweep config '{path}': include_path '{folder}' is not a folder of task YAMLs")
    kinds = raw.get("kinds") or {}
    if not isinstance(kinds, dict):
        raise QKAblateError(f"sweep config '{path}': kinds must map tasks to {' or '.join(KINDS)}, got {kinds!r}")
    for task, kind in kinds.items():
        check_kind(str(task), kind, f"sweep config '{path}', kinds entry '{task}={kind}'")
    engine_name = str(raw.get("engine", "hf"))
    if engine_name not in ENGINES:
        raise QKAblateError(f"sweep config '{path}': engine must be one of {', '.join(ENGINES)}, got {engine_name!r}")
    if not ENGINES[engine_name].profiles and raw.get("profile") is not None:
        raise QKAblateError(
            f"sweep config '{path}': profile runs the HF model; drop it from an engine: {engine_name} sweep"
        )
    output = Path(raw.get("output") or Path("runs") / _slug(raw.get("name") or file.stem))
    base = raw.get("baseline_model")
    if base is not None and str(base) not in [str(m["pretrained"]) for m in models]:
        raise QKAblateError(
            f"sweep config '{path}': baseline_model {base!r} is not the pretrained of any of its models"
        )
    board = raw.get("leaderboard")
    return SweepConfig(
        name=str(raw.get("name") or file.stem),
        output=output,
        leaderboard=Path(board) if board else None,
        models=[dict(m) for m in models],
        interventions=specs,
        tasks=[str(t) for t in tasks],
        limit=limit,
        batch_size=raw.get("batch_size", 4),
        device=str(raw.get("device", "auto")),
        metadata=dict(raw.get("metadata") or {}),
        include_path=include,
        kinds={str(t): str(k) for t, k in kinds.items()},
        profile=_profile_settings(raw.get("profile"), path),
        source=file,
        engine=engine_name,
        baseline_model=None if base is None else str(base),
    )


def _cell_settings(config: SweepConfig, model: dict[str, Any], spec: InterventionSpec) -> dict[str, Any]:
    settings = {
        "model": model,
        "intervention": spec.to_dict(),
        "tasks": config.tasks,
        "limit": config.limit,
        "metadata": config.metadata,
    }
    return settings if config.engine == "hf" else {**settings, "engine": config.engine}  # hf cells predate the key


def _is_done(cell: Path, settings: dict[str, Any]) -> bool:
    marker = cell / MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("settings") == json.loads(json.dumps(settings, default=str))
    except (OSError, json.JSONDecodeError):
        return False


def _write_cell(cell: Path, results: dict[str, Any]) -> None:
    """The files `lm_eval --output_path cell --log_samples` would write (one model folder)."""
    from lm_eval.utils import handle_non_serializable

    stamp = time.strftime("%Y-%m-%dT%H-%M-%S") + f".{int(time.time() * 1e6) % 1_000_000:06d}"
    folder = cell / "results"
    folder.mkdir(parents=True, exist_ok=True)
    samples = results.pop("samples", {}) or {}
    for task, rows in samples.items():
        with (folder / f"samples_{task}_{stamp}.jsonl").open("w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, default=handle_non_serializable, ensure_ascii=False) + "\n")
    (folder / f"results_{stamp}.json").write_text(
        json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False)
    )


@dataclass(frozen=True)
class PlannedCell:
    name: str
    spec: InterventionSpec
    folder: Path
    done: bool


def _model_folder(config: SweepConfig, model: dict[str, Any]) -> Path:
    return config.output / _slug(Path(str(model["pretrained"])).name)


def plan(config: SweepConfig, model: dict[str, Any]) -> tuple[list[PlannedCell], bool]:
    """One model's cells, each marked done when a rerun would keep it, and whether its profile is due."""
    folder = _model_folder(config, model)
    cells = []
    for name, spec in config.interventions.items():
        cell = folder / _slug(name)
        cells.append(PlannedCell(name, spec, cell, _is_done(cell, _cell_settings(config, model, spec))))
    needs_profile = config.profile is not None and not _profile_done(folder / "profile", config.profile)
    return cells, needs_profile


def run_sweep(config: SweepConfig, log=print) -> list[Path]:
    """Run every unfinished cell; return every cell folder of the grid, finished ones included."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    import qk_ablate.plugin  # noqa: F401  (our tasks and templates for the TaskManager)

    device = auto_device(config.device)
    cells: list[Path] = []
    for model in config.models:
        planned, needs_profile = plan(config, model)
        cells += [cell.folder for cell in planned]
        for cell in planned:
            if cell.done:
                log(f"[{model['pretrained']} / {cell.name}] finished earlier, kept: {cell.folder}")
        todo = [cell for cell in planned if not cell.done]
        if not todo and not needs_profile:
            continue
        manager = TaskManager(include_path=config.include_path or None, metadata={**model, **config.metadata})
        _check_tasks(config, manager)  # before the model loads
        lm = engine(config.engine).load(model, config.batch_size, device, [cell.spec for cell in todo])
        if needs_profile and config.profile is not None:
            _profile(lm, str(model["pretrained"]), config.profile, _model_folder(config, model) / "profile", log)
        for cell in todo:
            if cell.folder.exists():
                shutil.rmtree(cell.folder)  # a cell without its marker was cut short: start it again
            started = time.time()
            lm.use(cell.spec)
            results = simple_evaluate(
                model=lm, tasks=list(config.tasks), limit=config.limit, task_manager=manager, log_samples=True
            )
            _write_cell(cell.folder, results)
            marker = {"settings": _cell_settings(config, model, cell.spec), "seconds": round(time.time() - started, 1)}
            (cell.folder / MARKER).write_text(json.dumps(marker, indent=1, default=str))
            log(f"[{model['pretrained']} / {cell.name}] done in {time.time() - started:.0f}s -> {cell.folder}")
    return cells


def _profile_done(folder: Path, settings: ProfileSettings) -> bool:
    try:
        return settings.matches(json.loads((folder / "profile.json").read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError):
        return False


def _profile(lm: Any, name: str, settings: ProfileSettings, folder: Path, log) -> None:
    """Profile the loaded model with no intervention attached."""
    from qk_ablate.probes.figures import save_heatmaps
    from qk_ablate.probes.profile import headline, run_profile, save_profile

    started = time.time()
    lm.use(InterventionSpec())
    profile = run_profile(
        lm.model, lm.tokenizer, name, list(settings.lengths), settings.samples, settings.source, settings.lam
    )
    save_profile(profile, folder)
    save_heatmaps(profile, folder)
    log(f"[{name} / profile] done in {time.time() - started:.0f}s -> {folder}\n{headline(profile)}")


def _check_tasks(config: SweepConfig, manager: Any) -> None:
    known = set(manager.all_tasks)
    for task in config.tasks:
        if task not in known:
            near = get_close_matches(task, sorted(known), n=3)
            hint = f"did you mean {', '.join(near)}? " if near else ""
            raise QKAblateError(
                f"sweep config '{config.source}': unknown task '{task}'; {hint}"
                "`lm_eval ls tasks` lists them (your own YAMLs need include_path)"
            )


def write_leaderboard(config: SweepConfig, markdown: str, path: Path, command: str) -> Path:
    """results/leaderboard.md: the report table with the command and config that produced it."""
    from importlib.metadata import version

    path.parent.mkdir(parents=True, exist_ok=True)
    limit = f"{config.limit} documents per task" if config.limit else "every document of each task"
    stack = ", ".join(f"{name} {version(name)}" for name in ("qk-ablate", "lm_eval", "torch", "transformers"))
    path.write_text(
        f"# Leaderboard: {config.name}\n\nMade by `{command}` ({limit}; config `{config.source}`), "
        f"{time.strftime('%Y-%m-%d')}, with {stack}.\n\n{markdown}\n",
        encoding="utf-8",
    )
    return path
