"""The run configuration: one flat dataclass, filled from defaults < a TOML/YAML file < command-line flags."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["TrainConfig", "load_config_file", "resolve_config", "DEFAULT_LR_EPS"]

# (lr, eps) per trainable set when the user gives none. full and lora are MeZO's recommendations
# (paper Table 16 / the authors' README), tuned for 20k steps. prefix uses eps = 1e-1 as MeZO does and
# lr = 2e-2, twice MeZO's 1e-2: the default run has only a few hundred steps, and a forward-only
# estimate of the loss curvature on mr put the stable limit near 6e-2 (docs/finetuning.md).
DEFAULT_LR_EPS: dict[str, tuple[float, float]] = {
    "full": (1e-6, 1e-3),
    "lora": (1e-4, 1e-2),
    "prefix": (2e-2, 1e-1),
}


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Everything a run needs; the resolved copy is written to the run folder as ``config.yaml``."""

    model: str = _f("smollm2-135m", "model alias, hub id or local folder")
    task: str = _f("mr", "task name (zotune tasks), or 'custom' with --data")
    method: str = _f("mezo", "ZO method (zotune.available_methods())")
    peft: str = _f("prefix", "trainable set: full, lora or prefix")
    steps: int = _f(200, "optimizer steps")
    lr: float | None = _f(None, "learning rate (default: MeZO's per --peft)")
    eps: float | None = _f(None, "perturbation scale (default: MeZO's per --peft)")
    batch_size: int = _f(16, "examples per step")
    eval_every: int = _f(50, "evaluate on dev every N steps (0: only at the end)")
    seed: int = _f(0, "seed for data sampling, batches and the optimizer")
    out: str | None = _f(None, "run folder (default runs/<task>-<model>-<peft>-<time>)")
    num_train: int = _f(1000, "training examples sampled from the train pool")
    num_dev: int | None = _f(200, "dev examples (best checkpoint by dev metric)")
    num_eval: int = _f(500, "test examples sampled from the held-out pool")
    max_length: int = _f(128, "tokens per sequence (prompts cut from the left)")
    dtype: str = _f("float32", "model dtype (float32 recommended: eps is below bf16 resolution)")
    objective: str = _f("auto", "auto, ce, lm, f1 or accuracy (the last two are non-differentiable)")
    weight_decay: float = _f(0.0, "decoupled weight decay")
    n_queries: int | None = _f(None, "random directions per step (default: the method's: 1, the authors' KerZOO 3)")
    method_options: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "options of the method's components, e.g. {clip_norm: 1e5} or "
                          "{kerzoo: {clip_norm: 1e5}}, {n_rngs: 16} for pezo, {interval: 50} for dizo (config file only)"},
    )
    eval_batch_size: int = _f(32, "examples per evaluation batch")
    max_new_tokens: int = _f(50, "generation length for QA tasks")
    max_nonfinite: int = _f(5, "stop after this many non-finite losses in a row")
    lora_r: int = _f(8, "LoRA rank")
    lora_alpha: int = _f(16, "LoRA alpha")
    prefix_tokens: int = _f(5, "prefix-tuning virtual tokens")
    train_embeddings: bool = _f(False, "full fine-tuning: also perturb the token embedding / LM head")
    data: str | None = _f(None, "custom task: a JSONL or CSV file")
    test_data: str | None = _f(None, "custom task: held-out file (default: a fixed 20% of --data)")
    template: str | None = _f(None, "custom task: prompt template over the row's fields, e.g. '{text} It was'")
    label_words: Any = _f(None, "custom task: 'label=word,...' or 'word0,word1,...'")
    label_field: str = _f("label", "custom task: the label column")
    answer_field: str | None = _f(None, "custom task (generation): the answer column")
    data_dir: str | None = _f(None, "hub task: local folder with train.jsonl / validation.jsonl in the hub schema")
    threads: int | None = _f(None, "torch CPU threads (default: torch's choice)")
    device: str = _f("auto", "auto (cuda if available, else cpu), cpu or cuda[:N]")
    zero_shot: bool = _f(True, "evaluate the untrained model on dev and test first")
    progress: bool = _f(True, "show a progress bar")
    overwrite: bool = _f(False, "replace an existing run folder")

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "num_train", "num_eval", "max_length", "eval_batch_size", "max_nonfinite", "n_queries"):
            value = getattr(self, name)
            if name == "n_queries" and value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name in ("steps", "num_train") else 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0, got {self.eval_every}")
        if self.peft not in DEFAULT_LR_EPS:
            raise ValueError(f"unknown peft mode {self.peft!r}; use one of {', '.join(DEFAULT_LR_EPS)}")
        if not isinstance(self.method_options, dict):
            raise ValueError(f"method_options must be a mapping of option = value, got {self.method_options!r}")
        for name in ("lr", "eps"):
            value = getattr(self, name)
            if value is not None and not (value > 0):
                raise ValueError(f"{name} must be > 0, got {value}")

    @property
    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR_EPS[self.peft][0]

    @property
    def resolved_eps(self) -> float:
        return self.eps if self.eps is not None else DEFAULT_LR_EPS[self.peft][1]

    @property
    def is_custom(self) -> bool:
        return self.data is not None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["lr"], out["eps"] = self.resolved_lr, self.resolved_eps
        return out

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML (``.toml``) or YAML (``.yaml`` / ``.yml``) config; keys use underscores or dashes."""
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
        raise ValueError(f"malformed config file {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"config file {path} must hold a mapping of option = value")
    # a [train] table (TOML) or train: section (YAML) is accepted as well as top-level keys
    if set(raw) == {"train"} and isinstance(raw["train"], dict):
        raw = raw["train"]
    return {str(k).replace("-", "_"): v for k, v in raw.items()}


def resolve_config(file_values: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the config file's values, then command-line overrides (``None`` means not given)."""
    known = set(TrainConfig.field_names())
    values: dict[str, Any] = {}
    for source_name, source in (("config file", file_values or {}), ("overrides", overrides or {})):
        unknown = sorted(set(source) - known)
        if unknown:
            raise ValueError(f"unknown option(s) in {source_name}: {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        values.update({k: v for k, v in source.items() if v is not None})
    return TrainConfig(**values)
