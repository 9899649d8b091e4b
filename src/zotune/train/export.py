"""Export a run's best checkpoint as a Hugging Face model folder (``zotune export``), optionally pushed to the hub.

What is written depends on what the run trained (its ``checkpoint/``, :mod:`zotune.train.checkpoint`):

* full fine-tuning: the base model with the best weights, ``save_pretrained`` (safetensors) plus its tokenizer,
  loadable by ``AutoModelForCausalLM.from_pretrained(OUT)``;
* LoRA: by default the adapter merged into the weights (``merge_and_unload``), the same kind of folder;
  with ``merge_lora=False`` the PEFT adapter folder (``PeftModel.from_pretrained(base, OUT)``);
* prefix tuning: the adapter folder (virtual tokens have no weights to merge into);
* a ``base`` checkpoint (no trained step beat the zero-shot model on dev): the base model as the run loaded it.

Every folder also holds the tokenizer, a short ``README.md`` naming the base model and the run, and
``zotune_export.json``, the marker that records what was written: ``overwrite=True`` replaces only a folder
holding that marker and nothing it does not list ("no flag deletes what zotune did not create"). Every
check on the run folder and the output folder happens before the model loads, and the folder is written
beside its destination and moved into place whole, so a failed export leaves the destination as it was.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["EXPORT_MARKER", "ExportPlan", "PushError", "plan_export", "export_run", "check_push", "push_folder"]

EXPORT_MARKER = "zotune_export.json"
_OLD_CHECKPOINT = ".old"  # save_checkpoint's fallback name while it swaps folders (checkpoint.old)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# what a folder holds, per kind of export (the "written" field of the marker and of the result)
WRITTEN = {
    "model": "the fine-tuned model (save_pretrained)",
    "merged-lora": "the model with the LoRA adapter merged into its weights (save_pretrained)",
    "adapter": "the PEFT adapter (load it onto the base model with PeftModel.from_pretrained)",
    "base-model": "the base model unchanged (no trained step beat the zero-shot model on dev)",
}


class PushError(RuntimeError):
    """The folder was exported but could not be uploaded to the hub; it is left as written."""


@dataclass(frozen=True)
class ExportPlan:
    """Everything an export needs, found and checked before the model loads."""

    run: Path
    out: Path
    checkpoint: Path
    meta: dict[str, Any]  # the checkpoint's zotune_checkpoint.json
    summary: dict[str, Any]  # the run's summary.json ({} when it has none)
    written: str  # a key of WRITTEN
    peft: str  # full, lora or prefix
    replace: bool  # out exists (empty, or an earlier export that overwrite may replace)

    @property
    def best_step(self) -> int | None:
        step = self.meta.get("step", self.summary.get("best_step"))
        return None if step is None else int(step)


# --- checks before the model loads ------------------------------------------------------------------------

def _best_checkpoint(run: Path) -> Path:
    """The run's best-dev checkpoint folder (or its ``.old`` twin mid-swap); a clear error when there is none."""
    from zotune.train.checkpoint import CHECKPOINT_DIR

    for candidate in (run / CHECKPOINT_DIR, run / (CHECKPOINT_DIR + _OLD_CHECKPOINT)):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"{run} has no best checkpoint ({CHECKPOINT_DIR}/): the run stopped before its first dev evaluation, "
        "or it ran with --steps 0 (the zero-shot model only); nothing to export")


def _adapter_kind(checkpoint: Path, meta: dict[str, Any]) -> str:
    """``lora`` or ``prefix`` for a PEFT checkpoint, from its adapter_config.json (the run's peft otherwise)."""
    config_path = checkpoint / "adapter_config.json"
    try:
        peft_type = str(json.loads(config_path.read_text()).get("peft_type", "")).upper()
    except (OSError, ValueError) as exc:
        raise ValueError(f"{checkpoint} is a PEFT checkpoint without a readable adapter_config.json ({exc})") from None
    if peft_type == "LORA":
        return "lora"
    if peft_type == "PREFIX_TUNING":
        return "prefix"
    raise ValueError(f"{checkpoint}: adapter type {peft_type or meta.get('peft')!r} is not one zotune trains "
                     "(LoRA or prefix tuning)")


def _nearest_existing(path: Path) -> Path:
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    return probe


def _read_marker(folder: Path) -> dict[str, Any] | None:
    """An earlier export's marker, or None when the folder holds none (or an unreadable one)."""
    try:
        marker = json.loads((folder / EXPORT_MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("format") != "zotune-export":
        return None
    if not isinstance(marker.get("files"), list):
        return None
    return marker


def _check_out(out: Path, run: Path, overwrite: bool) -> bool:
    """Refuse an output folder the export may not write; True when ``out`` exists and will be replaced."""
    if out.is_symlink():
        raise ValueError(f"OUT_DIR {out} is a symbolic link; give the folder itself")
    resolved, run_resolved = out.resolve(), run.resolve()
    if resolved == run_resolved or run_resolved in resolved.parents:
        raise ValueError(f"OUT_DIR {out} is inside the run folder {run}, which holds only what zotune train writes: "
                         "choose a folder outside it")
    if resolved in run_resolved.parents:
        raise ValueError(f"OUT_DIR {out} contains the run folder {run}: choose another folder")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"OUT_DIR {out} is a file, not a folder")
    existing = _nearest_existing(out if out.exists() else out.parent)
    if not existing.is_dir():
        raise NotADirectoryError(f"OUT_DIR {out}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"OUT_DIR {out}: {existing} is not writable")
    if out.exists() and not os.access(out.parent, os.W_OK | os.X_OK):  # replaced by a rename in its parent
        raise PermissionError(f"OUT_DIR {out}: its parent {out.parent} is not writable")
    if not out.exists():
        return False
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return True
    marker = _read_marker(out)
    if marker is None:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise FileExistsError(f"OUT_DIR {out} is not empty and was not written by zotune export (it holds {shown}); "
                              "--overwrite only replaces an earlier export: choose a new or empty folder")
    if not overwrite:
        raise FileExistsError(f"OUT_DIR {out} holds an earlier export (of {marker.get('run_folder')}): "
                              "pass --overwrite to replace it, or choose another folder")
    ours = set(marker["files"]) | {EXPORT_MARKER}
    foreign = [name for name in entries if name not in ours]
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise FileExistsError(f"OUT_DIR {out} holds an earlier export plus files it did not write ({shown}); "
                              "--overwrite replaces only what zotune export wrote: move them or choose another folder")
    return True


def plan_export(run_dir: str | Path, out_dir: str | Path, *, merge_lora: bool = True,
                overwrite: bool = False) -> ExportPlan:
    """Check the run folder, its best checkpoint and the output folder, and decide what will be written.

    Raises ``FileNotFoundError`` / ``ValueError`` for a folder that is not a run or has no best checkpoint,
    ``FileExistsError`` for an output folder that is not new, empty or (with ``overwrite``) an earlier export.
    """
    from zotune.train.checkpoint import checkpoint_meta
    from zotune.train.run_folder import RunFolder

    folder = RunFolder.open(run_dir)
    run, out = folder.path, Path(out_dir).expanduser()
    if not (run / "config.yaml").is_file():
        raise FileNotFoundError(f"{run} has no config.yaml: not a complete zotune run folder")
    checkpoint = _best_checkpoint(run)
    meta = checkpoint_meta(checkpoint)
    summary = folder.read_json("summary.json") if (run / "summary.json").is_file() else {}
    fmt = meta.get("format")
    if fmt == "base":
        written, peft = "base-model", str(meta.get("peft", "full"))
    elif fmt == "trainable-state":
        written, peft = "model", "full"
        if not (checkpoint / "model.safetensors").is_file():
            raise FileNotFoundError(f"{checkpoint} has no model.safetensors")
    elif fmt == "peft":
        peft = _adapter_kind(checkpoint, meta)
        written = "merged-lora" if peft == "lora" and merge_lora else "adapter"
    else:
        raise ValueError(f"{checkpoint} has an unknown checkpoint format {fmt!r}")
    replace = _check_out(out, run, overwrite)
    return ExportPlan(run=run, out=out, checkpoint=checkpoint, meta=meta, summary=summary, written=written, peft=peft,
                      replace=replace)


def check_push(repo_id: str) -> None:
    """Refuse, before the model loads, a push that cannot work: a malformed repo id, no token, offline mode."""
    import huggingface_hub
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except ValueError as exc:
        raise ValueError(f"--push-to-hub {repo_id!r} is not a valid repo id (owner/name): "
                         f"{str(exc).splitlines()[0]}") from None
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        raise ValueError("--push-to-hub needs the network, but HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set")
    try:
        token = huggingface_hub.get_token()
    except Exception as exc:  # an OIDC exchange that failed: the hub client's own error, in one line
        raise ValueError(f"--push-to-hub: no usable Hugging Face token ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not token:
        raise ValueError("--push-to-hub needs a Hugging Face token: run `hf auth login` or set HF_TOKEN")


# --- writing ------------------------------------------------------------------------------------------------

def _model_card(plan: ExportPlan, model_name: str, source: str, target: str) -> str:
    """A short README.md: the base model, the run, and how to load the folder."""
    from zotune.llm.models import MODEL_ALIASES

    hub_base = model_name if _HUB_ID.match(model_name) and not Path(model_name).expanduser().exists() else None
    library = "peft" if plan.written == "adapter" else "transformers"
    front = ["---", f"library_name: {library}", "tags:", "- zotune", "- zeroth-order"]
    if hub_base:
        front.append(f"base_model: {hub_base}")
    front.append("---")
    if model_name in MODEL_ALIASES:
        base_text = f"zotune's `{model_name}`: {MODEL_ALIASES[model_name].description}"
        load_base = f'load_model("{model_name}").model  # from zotune.llm.models import load_model'
    else:
        base_text = f"`{model_name}`"
        load_base = f'AutoModelForCausalLM.from_pretrained("{source}")'
    step = plan.best_step
    run = plan.summary
    lines = [*front, "", f"# {Path(target).name or target}", "",
             f"Fine-tuned forward-only (zeroth-order) with zotune from {base_text}.", "",
             f"- base model: `{model_name}` (loaded from `{source}`)",
             f"- method: {plan.meta.get('method', run.get('method'))}, trainable set: {plan.peft}",
             f"- task: {plan.meta.get('task', run.get('task'))}",
             f"- best dev step: {step} of {run.get('steps', '?')} (run folder `{plan.run.name}`)",
             f"- this folder holds {WRITTEN[plan.written]}", "", "## Loading", "", "```python"]
    if plan.written == "adapter":
        lines += ["from peft import PeftModel", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  f"base = {load_base}", f'model = PeftModel.from_pretrained(base, "{target}")',
                  f'tokenizer = AutoTokenizer.from_pretrained("{target}")']
    else:
        lines += ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  f'model = AutoModelForCausalLM.from_pretrained("{target}")',
                  f'tokenizer = AutoTokenizer.from_pretrained("{target}")']
    lines += ["```", ""]
    if plan.written == "adapter" and plan.peft == "prefix":
        lines += ["Prefix tuning adds virtual tokens in front of every input; they have no weights to merge into, "
                  "so the adapter is exported as it is.", ""]
    return "\n".join(lines)


def _fresh_temp_dir(out: Path) -> Path:
    """A new hidden folder beside ``out`` (created with the process's umask, unlike ``mkdtemp``'s 0700)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(100):
        tmp = out.parent / f".{out.name}.zotune-export-{os.getpid()}-{time.time_ns()}-{attempt}"
        try:
            tmp.mkdir()
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary folder beside {out}")


def _move_into_place(tmp: Path, out: Path, replace: bool) -> None:
    """Put the complete folder at ``out``; an existing (empty, or earlier-export) folder is swapped out whole."""
    if not replace:
        os.replace(tmp, out)
        return
    old = tmp.with_name(tmp.name + ".old")
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)  # put the earlier export back
        raise
    shutil.rmtree(old, ignore_errors=True)


def _write_marker(folder: Path, payload: dict[str, Any]) -> None:
    from zotune.train.run_folder import jsonable

    (folder / EXPORT_MARKER).write_text(json.dumps(jsonable(payload), indent=2) + "\n")


def export_run(run_dir: str | Path, out_dir: str | Path, *, merge_lora: bool = True, overwrite: bool = False,
               loaded: Any = None, repo_id: str | None = None,
               echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write the best checkpoint of the run in ``run_dir`` to ``out_dir`` as a Hugging Face folder.

    ``loaded`` (a :class:`zotune.llm.models.LoadedModel`) replaces loading the run's base model by name;
    ``repo_id`` only names the hub repo in the README's loading snippet. Returns what the marker records.
    """
    import torch

    from zotune.llm.models import load_model
    from zotune.train.checkpoint import load_checkpoint
    from zotune.train.loop import load_run_config

    say = echo or (lambda msg: print(msg, file=sys.stderr))
    plan = plan_export(run_dir, out_dir, merge_lora=merge_lora, overwrite=overwrite)
    cfg = load_run_config(plan.run)
    status = plan.summary.get("status")
    if status not in (None, "completed"):
        say(f"note: the run is {status} (step {plan.summary.get('steps_done')}); exporting its best checkpoint so far "
            f"(step {plan.best_step})")
    if plan.written == "base-model":
        say("note: no trained step beat the zero-shot model on dev (best dev step 0); exporting the base model unchanged")
    elif plan.peft == "prefix":
        say(f"note: prefix tuning cannot be merged into the weights; {plan.out} holds the PEFT adapter "
            "(load it with PeftModel.from_pretrained(base, OUT_DIR))")

    loaded = loaded or load_model(cfg.model.name, dtype=cfg.model.dtype, quiet=False)
    model = load_checkpoint(loaded.model, plan.checkpoint)
    if plan.written == "merged-lora":
        model = model.merge_and_unload()
    model.eval()
    source = str(getattr(loaded, "source", cfg.model.name))
    tmp = _fresh_temp_dir(plan.out)
    try:
        with torch.no_grad():
            model.save_pretrained(str(tmp), safe_serialization=True)
        loaded.tokenizer.save_pretrained(str(tmp))
        (tmp / "README.md").write_text(_model_card(plan, cfg.model.name, source, repo_id or str(plan.out)))
        files = sorted(p.name for p in tmp.iterdir())
        record = {"format": "zotune-export", "version": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                  "run_folder": str(plan.run.resolve()), "best_step": plan.best_step,
                  "method": plan.meta.get("method", cfg.method.name), "peft": plan.peft,
                  "task": plan.meta.get("task"), "model": cfg.model.name, "model_source": source,
                  "dtype": cfg.model.dtype, "checkpoint_format": plan.meta.get("format"), "written": plan.written,
                  "merged": plan.written == "merged-lora", "files": files, "pushed_to": None}
        _write_marker(tmp, record)
        _move_into_place(tmp, plan.out, plan.replace)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"out": str(plan.out), **{k: record[k] for k in ("run_folder", "best_step", "method", "peft", "model",
                                                            "written", "merged", "files")}}


def push_folder(folder: str | Path, repo_id: str, *, private: bool = False) -> str:
    """Upload an exported folder to the hub repo ``repo_id`` (created if missing; ``private`` applies only
    then) and record it in the folder's marker; returns the commit URL. Any failure (no network, a refused
    token) raises :class:`PushError` in one line and leaves the folder as it is."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    try:
        api = HfApi()
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                                   commit_message="Upload a model exported by zotune",
                                   ignore_patterns=[EXPORT_MARKER])  # the local marker holds local paths
    except Exception as exc:  # the hub client raises many types (HTTP, connection, auth, validation)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        detail = f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__
        raise PushError(f"could not push {folder} to {repo_id} ({detail}); "
                        f"the exported folder is intact: push it later with `hf upload {repo_id} {folder}`") from None
    url = str(getattr(commit, "commit_url", None) or commit)
    marker = _read_marker(folder)
    if marker is not None:
        _write_marker(folder, {**marker, "pushed_to": repo_id, "commit_url": url})
    return url
