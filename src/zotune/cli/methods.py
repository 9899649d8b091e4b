"""``zotune methods``: list the ZO methods ``--method`` accepts, their options with defaults, and how to combine them.

The defaults shown are read from the code, not copied: from the component's ``build`` signature when it
names the option, else from the constructor of the part it builds (an estimator, sampler or transform).
"""

from __future__ import annotations

import argparse
import inspect
import json
from dataclasses import dataclass
from typing import Any

from zotune.methods import BASE_METHOD, Component, Parts, Setup, available_methods, component

NO_DEFAULT: Any = inspect.Parameter.empty  # an option whose default could not be found


@dataclass(frozen=True)
class OptionInfo:
    """One option of a component: its name, its default (``NO_DEFAULT`` if unknown) and its type as text."""

    name: str
    default: Any
    type: str


def _parameters(func: Any) -> dict[str, inspect.Parameter]:
    """The named (not ``*args`` / ``**kwargs``) parameters of a callable or class; empty if it has no signature."""
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return {}
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {name: p for name, p in params.items() if p.kind in named}


def _built_classes(comp: Component) -> list[type]:
    """The classes of the parts ``comp`` builds with all defaults (nothing, if building needs more)."""
    try:
        parts: Parts = comp.build(Setup())
    except Exception:  # a component that cannot be built without the runner's inputs: use its signature only
        return []
    objects = [parts.estimator, parts.sampler, *parts.transforms]
    return [type(obj) for obj in objects if obj is not None]


def _type_text(annotation: Any) -> str:
    if annotation is inspect.Parameter.empty:
        return ""
    return annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)


def option_infos(comp: Component) -> list[OptionInfo]:
    """Every option of ``comp``, sorted by name, with the default and type its code declares."""
    sources = [_parameters(comp.build), *(_parameters(cls) for cls in _built_classes(comp))]
    infos = []
    for name in sorted(comp.options):
        param = next((params[name] for params in sources if name in params), None)
        if param is None:
            infos.append(OptionInfo(name, NO_DEFAULT, ""))
        else:
            infos.append(OptionInfo(name, param.default, _type_text(param.annotation)))
    return infos


def _base_summary() -> str:
    """The first line of :func:`zotune.methods.mezo`'s docstring."""
    from zotune.methods import mezo

    return (mezo.__doc__ or "").strip().splitlines()[0]


@dataclass(frozen=True)
class MethodInfo:
    """One method name ``--method`` accepts: its summary, what it replaces and its options."""

    name: str
    summary: str
    replaces: tuple[str, ...]
    options: tuple[OptionInfo, ...]


def describe_methods() -> list[MethodInfo]:
    """Every available method, the base (MeZO, no options of its own) first."""
    out = []
    for name in available_methods():
        if name == BASE_METHOD:
            out.append(MethodInfo(name, _base_summary(), (), ()))
        else:
            comp = component(name)
            out.append(MethodInfo(name, comp.summary, tuple(sorted(comp.replaces)), tuple(option_infos(comp))))
    return out


def _json_value(value: Any) -> Any:
    """``value`` if JSON holds it as is, else its ``repr`` (a callable, a torch device, ...)."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else repr(value)


def _to_json(method: MethodInfo) -> dict[str, Any]:
    options = []
    for opt in method.options:
        entry: dict[str, Any] = {"name": opt.name, "type": opt.type}
        if opt.default is not NO_DEFAULT:  # absent when the code declares none
            entry["default"] = _json_value(opt.default)
        options.append(entry)
    return {"name": method.name, "summary": method.summary, "replaces": list(method.replaces), "options": options}


def composition_help(methods: list[MethodInfo]) -> str:
    """How '+' composes methods and how their options are passed."""

    def taking(role: str) -> str:
        return ", ".join(m.name for m in methods if role in m.replaces)

    return f"""\
Combining methods: join names with '+', e.g. --method kerzoo+pezo+dizo is MeZO with KerZOO's estimator,
PeZO's sampler and DiZO's projection. At most one of them may replace the estimator ({taking("estimator")})
and one the sampler ({taking("sampler")}); transforms run in the order the name lists them.

Options go in a config file's method_options (zotune train --config run.toml), flat when only one
component of the method takes that name, or nested under the component's name ('-' may be written '_'):
    method = "kerzoo+pezo"
    method_options = {{clip_norm = 1e5, n_rngs = 16}}      # flat
    method_options = {{kerzoo = {{clip_norm = 1e5}}}}        # nested (needed when two components share a name)
In Python: zotune.build_optimizer("kerzoo+pezo", params, lr=1e-6, kerzoo={{"clip_norm": 1e5}}, n_rngs=16).
Every method also takes the run's --lr, --eps, --weight-decay and --n-queries."""


def format_text(methods: list[MethodInfo]) -> str:
    """The human-readable listing: one block per method, then :func:`composition_help`."""
    width = max(len(m.name) for m in methods)
    lines = []
    for m in methods:
        replaces = f" [replaces the {' and '.join(m.replaces)}]" if m.replaces else ""
        lines.append(f"{m.name:<{width}}  {m.summary}{replaces}")
        if not m.options:
            lines.append(f"{'':<{width}}    (no options of its own)")
        for opt in m.options:
            type_text = f": {opt.type}" if opt.type else ""
            default = " (no default declared)" if opt.default is NO_DEFAULT else f" = {opt.default!r}"
            lines.append(f"{'':<{width}}    {opt.name}{type_text}{default}")
    return "\n".join(lines) + "\n\n" + composition_help(methods)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "methods", help="list the ZO methods, their options and defaults", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import zotune  # noqa: F401  (importing the package registers every method's component)

    methods = describe_methods()
    if args.json:
        print(json.dumps({"methods": [_to_json(m) for m in methods], "compose": composition_help(methods)}, indent=2))
    else:
        print(format_text(methods))
    return 0
