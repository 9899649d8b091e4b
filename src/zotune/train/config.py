"""The run configuration, grouped by concern: model, data, method, run.

Each section is a dataclass whose fields carry their help text, type and command-line key in their
metadata, so a default and its help are written once: ``zotune train --help`` is generated from them
(``zotune.cli._common.add_config_flags``), and so are the error messages.

Values come from defaults < a TOML/YAML/JSON file < command-line flags. A file may be flat
(``steps = 200``) or sectioned (``[run]`` / ``run:`` tables); the keys are the flags' names with
underscores (``batch_size``) or dashes. Strings that spell numbers (PyYAML reads ``lr: 1e-3`` as the
string ``"1e-3"``) are converted; anything else of the wrong type is refused, naming the key.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

__all__ = [
    "TrainConfig", "ModelConfig", "DataConfig", "MethodConfig", "RunConfig", "SECTIONS", "DEFAULT_LR_EPS",
    "load_config_file", "resolve_config", "config_fields", "ConfigField", "coerce",
]

# (lr, eps) per trainable set when the user gives none. full and lora are MeZO's recommendations
# (paper Table 16 / the authors' README), tuned for 20k steps. prefix uses eps = 1e-1 as MeZO does and
# lr = 2e-2, twice MeZO's 1e-2: the default run has only a few hundred steps, and a forward-only
# estimate of the loss curvature on mr put the stable limit near 6e-2 (docs/finetuning.md).
DEFAULT_LR_EPS: dict[str, tuple[float, float]] = {
    "full": (1e-6, 1e-3),
    "lora": (1e-4, 1e-2),
    "prefix": (2e-2, 1e-1),
}
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _opt(default: Any, help: str, *, type: Any = str, key: str | None = None, minimum: float | None = None,
         choices: tuple[str, ...] | None = None, cli: bool = True, path: bool = False) -> Any:
    """A config field: ``type`` is what values are coerced to; ``key`` the flat / command-line name (default:
    the field's name); ``minimum`` and ``choices`` are checked on construction; ``cli=False`` keeps it out of
    the flags (file only); ``path=True`` is stored absolute in the run folder's ``config.yaml``."""
    metadata = {"help": help, "type": type, "key": key, "minimum": minimum, "choices": choices, "cli": cli, "path": path}
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=metadata)
    return field(default=default, metadata=metadata)


class _Section:
    """Validation shared by the sections: types, minimums and choices from the field metadata."""

    title: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            meta = f.metadata
            value = coerce(meta["key"] or f.name, getattr(self, f.name), meta["type"])
            setattr(self, f.name, value)
            key = meta["key"] or f.name
            if value is None:
                continue
            if meta["minimum"] is not None and value < meta["minimum"]:
                kind = "a positive integer" if meta["type"] is int and meta["minimum"] == 1 else f">= {meta['minimum']:g}"
                raise ValueError(f"{key} must be {kind}, got {value!r}")
            if meta["choices"] is not None and value not in meta["choices"]:
                raise ValueError(f"unknown {key} {value!r}; use one of {', '.join(meta['choices'])}")


@dataclass
class ModelConfig(_Section):
    """Which model, in which precision, and which of its weights are trained."""

    title: ClassVar[str] = "model"
    name: str = _opt("smollm2-135m", "model alias (zotune models), hub id or local folder", key="model", path=True)
    dtype: str = _opt("float32", "model weights' dtype (float32 recommended: a small eps is below bf16 resolution)",
                      choices=("float32", "bfloat16", "float16"))
    peft: str = _opt("prefix", "trainable set", choices=tuple(DEFAULT_LR_EPS))
    lora_r: int = _opt(8, "LoRA rank", type=int, minimum=1)
    lora_alpha: int = _opt(16, "LoRA alpha", type=int, minimum=1)
    prefix_tokens: int = _opt(5, "prefix-tuning virtual tokens", type=int, minimum=1)
    train_embeddings: bool = _opt(False, "full fine-tuning: also perturb the token embedding / LM head", type=bool)
    device_map: str | None = _opt(None, "spread a model too large for one device over several (accelerate's "
                                  "device_map; --device is then ignored)",
                                  choices=("auto", "balanced", "balanced_low_0", "sequential"))


@dataclass
class DataConfig(_Section):
    """The task, its examples and how they are turned into prompts."""

    title: ClassVar[str] = "data"
    task: str = _opt("mr", "task name (zotune tasks); ignored with --data")
    num_train: int = _opt(1000, "training examples sampled from the train pool", type=int, minimum=0)
    num_dev: int = _opt(200, "dev examples (the best checkpoint is chosen on dev)", type=int, minimum=0)
    num_eval: int = _opt(500, "test examples sampled from the held-out pool", type=int, minimum=1)
    max_length: int = _opt(128, "tokens per sequence (prompts are cut from the left)", type=int, minimum=1)
    objective: str = _opt("auto", "training loss", choices=("auto", "ce", "lm", "f1", "accuracy"))
    max_new_tokens: int = _opt(50, "generation length for QA tasks", type=int, minimum=1)
    eval_batch_size: int = _opt(32, "examples per evaluation batch", type=int, minimum=1)
    packing: str = _opt("auto", "run a batch's sequences end to end without padding (auto: where the model's "
                        "class supports it; off: length-grouped padded forwards, as runs before 2026-12-03)",
                        choices=("auto", "on", "off"))
    data: str | None = _opt(None, "custom task: a JSONL or CSV file", path=True)
    test_data: str | None = _opt(None, "custom task: held-out file (default: a fixed 20%% of --data)", path=True)
    template: str | None = _opt(None, "custom task: prompt template over the row's fields, e.g. '{text} It was'")
    label_words: Any = _opt(None, "custom task: 'label=word,...' or 'word0,word1,...'", type=object)
    label_field: str = _opt("label", "custom task: the label column")
    answer_field: str | None = _opt(None, "custom task (generation): the answer column")
    data_dir: str | None = _opt(None, "hub task: local folder with train.jsonl / validation.jsonl in the hub schema",
                                path=True)

    @property
    def is_custom(self) -> bool:
        return self.data is not None


@dataclass
class MethodConfig(_Section):
    """The ZO method and its hyperparameters."""

    title: ClassVar[str] = "method"
    name: str = _opt("mezo", "ZO method: {methods}, or several joined with + (e.g. kerzoo+pezo+dizo)", key="method")
    lr: float | None = _opt(None, "learning rate (default per --peft: full 1e-6, lora 1e-4, prefix 2e-2)", type=float)
    eps: float | None = _opt(None, "perturbation scale (default per --peft: full 1e-3, lora 1e-2, prefix 1e-1)",
                             type=float)
    batch_size: int = _opt(16, "examples per step", type=int, minimum=1)
    weight_decay: float = _opt(0.0, "decoupled weight decay", type=float, minimum=0.0)
    n_queries: int | None = _opt(None, "random directions per step (default: the method's; 1, the authors' KerZOO 3)",
                                 type=int, minimum=1)
    options: dict[str, Any] = _opt(
        {}, "options of the method's components, e.g. {clip_norm: 1e5} or {kerzoo: {clip_norm: 1e5}}, "
            "{n_rngs: 16} for pezo, {interval: 50} for dizo (config file only; zotune methods lists them)",
        type=dict, key="method_options", cli=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("lr", "eps"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number, got {value}")

    def resolved_lr(self, peft: str) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR_EPS[peft][0]

    def resolved_eps(self, peft: str) -> float:
        return self.eps if self.eps is not None else DEFAULT_LR_EPS[peft][1]


@dataclass
class RunConfig(_Section):
    """How long, where the results go, how often to evaluate and checkpoint, on which device."""

    title: ClassVar[str] = "run"
    steps: int = _opt(200, "optimizer steps (0: evaluate the zero-shot model only)", type=int, minimum=0)
    eval_every: int = _opt(50, "evaluate on dev every N steps (0: only at the end)", type=int, minimum=0)
    checkpoint_every: int = _opt(50, "save a resumable checkpoint every N steps (0: only at the end and on "
                                     "Ctrl-C / SIGTERM)", type=int, minimum=0)
    seed: int = _opt(0, "seed for data sampling, batches and the optimizer's directions", type=int, minimum=0)
    out: str | None = _opt(None, "run folder (default: runs/<task>-<model>-<peft>-<time>)", path=True)
    overwrite: bool = _opt(False, "replace --out if it holds a zotune run (any other folder is refused)", type=bool)
    max_nonfinite: int = _opt(5, "stop after this many non-finite losses in a row", type=int, minimum=1)
    stop_loss_ratio: float | None = _opt(None, "stop as diverged when the mean training loss over the latest tenth "
                                               "of the run is above this many times that of its first hundredth "
                                               "(checked every hundredth; default: never)", type=float, minimum=1.0)
    zero_shot: bool = _opt(True, "evaluate the untrained model on dev and test first (it competes for best)",
                           type=bool)
    progress: bool = _opt(True, "show progress bars", type=bool)
    threads: int | None = _opt(None, "torch CPU threads (default: torch's choice)", type=int, minimum=1)
    device: str = _opt("auto", "auto (cuda if available, else cpu), cpu, cuda or cuda:N")
    tensorboard: bool = _opt(False, "also write every metrics.jsonl record as TensorBoard scalars to <out>/tensorboard "
                                    "(needs the tensorboard package: pip install 'zotune[tensorboard]')", type=bool)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not _DEVICE.match(self.device):
            raise ValueError(f"unknown device {self.device!r}; use auto, cpu, cuda or cuda:N")


SECTIONS: dict[str, type[_Section]] = {"model": ModelConfig, "data": DataConfig, "method": MethodConfig,
                                       "run": RunConfig}


@dataclass(frozen=True)
class ConfigField:
    """One option as the command line and config files see it."""

    key: str  # flat name: "batch_size"
    section: str  # "method"
    attr: str  # the section's field name: "batch_size"
    default: Any
    help: str
    type: Any
    choices: tuple[str, ...] | None
    cli: bool
    path: bool

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")


def config_fields() -> list[ConfigField]:
    """Every option of every section, in section order."""
    out = []
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            default = {} if f.default is dataclasses.MISSING else f.default
            out.append(ConfigField(f.metadata["key"] or f.name, section, f.name, default, f.metadata["help"],
                                   f.metadata["type"], f.metadata["choices"], f.metadata["cli"], f.metadata["path"]))
    return out


_FIELDS_BY_KEY: dict[str, ConfigField] = {}


def _by_key() -> dict[str, ConfigField]:
    if not _FIELDS_BY_KEY:
        _FIELDS_BY_KEY.update({f.key: f for f in config_fields()})
    return _FIELDS_BY_KEY


def coerce(key: str, value: Any, typ: Any) -> Any:
    """``value`` as ``typ``, or a ``ValueError`` naming ``key``. ``None`` stays ``None`` (not given)."""
    if value is None or typ is object:
        return value
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "on", "off"):
            return value.strip().lower() in ("true", "yes", "on")
        raise ValueError(f"{key} must be true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise ValueError(f"{key} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        number = _number(key, value, "an integer")
        if not number.is_integer():
            raise ValueError(f"{key} must be an integer, got {value!r}")
        return int(number)
    if typ is float:
        if isinstance(value, bool):
            raise ValueError(f"{key} must be a number, got {value!r}")
        return float(value) if isinstance(value, (int, float)) else _number(key, value, "a number")
    if typ is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{key} must be a mapping of option = value, got {value!r}")
        return {k: _yaml_exponent(v) for k, v in value.items()}
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string, got {value!r}")
    return value


_EXPONENT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _yaml_exponent(value: Any) -> Any:
    """PyYAML reads ``1e5`` (no dot) as a string; inside ``method_options`` such strings become floats
    (nested mappings too), other strings stay strings."""
    if isinstance(value, dict):
        return {k: _yaml_exponent(v) for k, v in value.items()}
    if isinstance(value, str) and _EXPONENT.match(value.strip()):
        return float(value)
    return value


def _number(key: str, value: Any, what: str) -> float:
    if isinstance(value, float):
        return value
    if isinstance(value, str):
        try:
            return float(value.strip())  # "1e-3": PyYAML's reading of lr: 1e-3
        except ValueError:
            pass
    raise ValueError(f"{key} must be {what}, got {value!r}")


@dataclass
class TrainConfig:
    """Everything a run needs; the resolved copy is written to the run folder as ``config.yaml``.

    Build it from flat keys with :meth:`from_flat` (``TrainConfig.from_flat(steps=10, lr=1e-3)``) or from
    sections (``TrainConfig(run=RunConfig(steps=10))``).
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    run: RunConfig = field(default_factory=RunConfig)

    @classmethod
    def from_flat(cls, **values: Any) -> "TrainConfig":
        """From flat keys (the flags' names); unknown keys are refused with the known ones."""
        fields = _by_key()
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ValueError(f"unknown option(s): {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
        grouped: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
        for key, value in values.items():
            grouped[fields[key].section][fields[key].attr] = value
        return cls(**{name: SECTIONS[name](**kw) for name, kw in grouped.items()})

    def flat(self) -> dict[str, Any]:
        """Every option under its flat key."""
        return {f.key: getattr(getattr(self, f.section), f.attr) for f in config_fields()}

    @property
    def resolved_lr(self) -> float:
        return self.method.resolved_lr(self.model.peft)

    @property
    def resolved_eps(self) -> float:
        return self.method.resolved_eps(self.model.peft)

    def to_dict(self) -> dict[str, Any]:
        """Sectioned, with the learning rate and eps resolved, as written to ``config.yaml``."""
        out: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
        for f, value in zip(config_fields(), self.flat().values(), strict=True):
            out[f.section][f.key] = value
        out["method"]["lr"], out["method"]["eps"] = self.resolved_lr, self.resolved_eps
        return out

    def with_absolute_paths(self, base: Path | None = None) -> "TrainConfig":
        """A copy whose file options are absolute (a local model folder only if it exists), so the run
        folder's config works from any directory (``zotune eval``, ``--resume``, ``zotune replay``)."""
        base = base or Path.cwd()
        values = self.flat()
        for f in config_fields():
            value = values[f.key]
            if f.path and isinstance(value, str):
                candidate = Path(value).expanduser()
                if f.key == "model" and not candidate.exists():
                    continue  # an alias or a hub id
                values[f.key] = str(candidate if candidate.is_absolute() else (base / candidate).resolve())
        return TrainConfig.from_flat(**values)


def _flatten(raw: dict[str, Any], origin: str) -> dict[str, Any]:
    """Sectioned or flat file values as flat keys; a section table must hold that section's keys."""
    fields = _by_key()
    out: dict[str, Any] = {}
    for key, value in raw.items():
        key = str(key).replace("-", "_")
        if key in SECTIONS and isinstance(value, dict):
            for inner, inner_value in value.items():
                inner = str(inner).replace("-", "_")
                if inner in fields and fields[inner].section != key:
                    raise ValueError(f"{origin}: {inner} belongs in [{fields[inner].section}], not [{key}]")
                out[inner] = inner_value
        else:
            out[key] = value
    return out


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML (``.toml``), YAML (``.yaml`` / ``.yml``) or JSON config as flat keys."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml", ".json"):
        raise ValueError(f"config file {path} must end in .toml, .yaml, .yml or .json")
    try:
        if suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]
            raw = tomllib.loads(text)
        elif suffix == ".json":
            raw = json.loads(text)
        else:
            import yaml

            raw = yaml.safe_load(text) or {}
    except Exception as exc:  # parser errors carry the line number in their message
        raise ValueError(f"malformed config file {path}: {' '.join(str(exc).split())}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"config file {path} must hold a mapping of option = value")
    # a [train] table (TOML) or train: section (YAML) is accepted as well as top-level keys
    if set(raw) == {"train"} and isinstance(raw["train"], dict):
        raw = raw["train"]
    return _flatten(raw, f"config file {path}")


def resolve_config(file_values: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the config file's values, then command-line overrides (``None`` means not given)."""
    known = set(_by_key())
    values: dict[str, Any] = {}
    for source_name, source in (("config file", file_values or {}), ("overrides", overrides or {})):
        unknown = sorted(set(source) - known)
        if unknown:
            raise ValueError(f"unknown option(s) in {source_name}: {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        values.update({k: v for k, v in source.items() if v is not None})
    return TrainConfig.from_flat(**values)
