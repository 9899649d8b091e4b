"""A run's seed log: every step's probe losses and hyperparameters, in a few bytes per step.

With the base weights and the run's config, the log rebuilds the fine-tuned weights bit for bit
(:func:`zotune.core.replay.replay_losses`; ``zotune replay RUN_DIR``): every direction z is regenerated
from (seed, step), so a step's whole content is the losses its probes saw.

Format (``seeds.log``): one JSON header line, then fixed-layout little-endian records::

    u32 step | u8 flags | f64 loss x losses_per_step | [f64 lr x groups, f64 weight_decay x groups]

Bit 0 of ``flags`` says the hyperparameters follow; they are written on the first step and whenever they
change, so a constant-lr run costs 4 + 1 + 8 * losses_per_step bytes a step (21 for MeZO). The file is
append-only; a resumed run truncates it to the length its checkpoint recorded, which also drops a record
a kill cut in half.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from zotune.core.replay import LoggedStep

__all__ = ["SeedLog", "SEED_LOG"]

SEED_LOG = "seeds.log"
_FORMAT = "zotune-seed-log"
_HEAD = struct.Struct("<IB")
_HYPER_FOLLOW = 1


class SeedLog:
    """Append-only writer and reader of ``seeds.log``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._last_hyper: tuple[tuple[float, ...], tuple[float, ...]] | None = None
        self._header: dict[str, Any] | None = None

    @classmethod
    def create(cls, path: str | Path, *, seed: int, losses_per_step: int, groups: int,
               optimizer_config: dict[str, Any]) -> "SeedLog":
        log = cls(path)
        header = {"format": _FORMAT, "version": 1, "seed": seed, "losses_per_step": losses_per_step,
                  "groups": groups, "optimizer": optimizer_config}
        with open(log.path, "wb") as handle:
            handle.write((json.dumps(header, sort_keys=True) + "\n").encode())
        log._header = header
        return log

    @property
    def header(self) -> dict[str, Any]:
        if self._header is None:
            with open(self.path, "rb") as handle:
                line = handle.readline()
            try:
                header = json.loads(line)
            except ValueError:
                raise ValueError(f"{self.path} is not a zotune seed log") from None
            if not isinstance(header, dict) or header.get("format") != _FORMAT:
                raise ValueError(f"{self.path} is not a zotune seed log")
            self._header = header
        return self._header

    def size(self) -> int:
        return self.path.stat().st_size

    def append(self, step: int, losses: list[float] | tuple[float, ...], lrs: tuple[float, ...],
               weight_decays: tuple[float, ...]) -> None:
        """Append one step's record (one write call, flushed to the OS)."""
        header = self.header
        if len(losses) != header["losses_per_step"]:
            raise ValueError(f"step {step} made {len(losses)} probe calls, the log expects {header['losses_per_step']}")
        hyper = (tuple(lrs), tuple(weight_decays))
        follow = hyper != self._last_hyper
        payload = _HEAD.pack(step, _HYPER_FOLLOW if follow else 0) + struct.pack(f"<{len(losses)}d", *losses)
        if follow:
            payload += struct.pack(f"<{2 * len(lrs)}d", *lrs, *weight_decays)
            self._last_hyper = hyper
        with open(self.path, "ab") as handle:
            handle.write(payload)

    def truncate(self, size: int) -> None:
        """Cut the log back to ``size`` bytes (a checkpoint's length) and recover the last hyperparameters."""
        with open(self.path, "r+b") as handle:
            handle.truncate(size)
            handle.flush()
            os.fsync(handle.fileno())
        self._last_hyper = None
        for logged in self.read():
            self._last_hyper = (logged.lrs, logged.weight_decays)

    def read(self, *, until_step: int | None = None) -> Iterator[LoggedStep]:
        """The logged steps in order (those with ``step < until_step`` if given); a trailing partial record
        (a run killed mid-write) is ignored."""
        header = self.header
        n_losses, groups = header["losses_per_step"], header["groups"]
        losses_fmt, hyper_fmt = struct.Struct(f"<{n_losses}d"), struct.Struct(f"<{2 * groups}d")
        data = self.path.read_bytes()
        pos = data.index(b"\n") + 1
        hyper: tuple[tuple[float, ...], tuple[float, ...]] | None = None
        while pos + _HEAD.size + losses_fmt.size <= len(data):
            step, flags = _HEAD.unpack_from(data, pos)
            losses = losses_fmt.unpack_from(data, pos + _HEAD.size)
            end = pos + _HEAD.size + losses_fmt.size
            if flags & _HYPER_FOLLOW:
                if end + hyper_fmt.size > len(data):
                    break
                values = hyper_fmt.unpack_from(data, end)
                hyper = (values[:groups], values[groups:])
                end += hyper_fmt.size
            if hyper is None:
                raise ValueError(f"{self.path}: the first record lacks its hyperparameters")
            if until_step is not None and step >= until_step:
                break
            yield LoggedStep(step, losses, *hyper)
            pos = end
