"""``zotune methods``: every registered method, its options with the defaults the code declares, --json."""

from __future__ import annotations

import inspect
import json

import pytest

import zotune
from zotune.cli import main
from zotune.methods import Setup, component


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["methods", *args]) == 0
    return capsys.readouterr().out


def _json(capsys: pytest.CaptureFixture[str]) -> dict[str, dict]:
    return {m["name"]: m for m in json.loads(_run(capsys, "--json"))["methods"]}


def test_text_lists_every_method_and_explains_composition(capsys: pytest.CaptureFixture[str]) -> None:
    out = _run(capsys)
    first_words = {line.split()[0] for line in out.splitlines() if line and not line[0].isspace()}
    for name in zotune.available_methods():
        assert name in first_words, f"{name} is not listed"
    for name in zotune.available_methods()[1:]:
        assert component(name).summary in out
    assert "kerzoo+pezo+dizo" in out
    assert "method_options" in out


def test_json_lists_every_method_and_every_option_with_a_default(capsys: pytest.CaptureFixture[str]) -> None:
    methods = _json(capsys)
    assert list(methods) == zotune.available_methods()
    assert methods["mezo"]["options"] == []
    for name in zotune.available_methods()[1:]:
        listed = {o["name"]: o for o in methods[name]["options"]}
        assert set(listed) == set(component(name).options)
        assert all("default" in o for o in listed.values()), f"{name}: an option without a default"
    assert methods["kerzoo"]["replaces"] == ["estimator"]


def test_defaults_are_the_codes_own(capsys: pytest.CaptureFixture[str]) -> None:
    methods = _json(capsys)

    def default(method: str, option: str) -> object:
        return next(o["default"] for o in methods[method]["options"] if o["name"] == option)

    # declared in the component's build signature
    clip_norm = inspect.signature(component("kerzoo").build).parameters["clip_norm"].default
    assert default("kerzoo", "clip_norm") == clip_norm
    # declared by the constructor of the part the component builds: compare with what a default build holds
    momentum = component("momentum").build(Setup()).transforms[0]
    assert default("momentum", "beta") == momentum.beta
    assert default("momentum", "window") == momentum.window
    sampler = component("pezo").build(Setup()).sampler
    assert default("pezo", "n_rngs") == sampler.n_rngs
    assert default("dizo", "interval") == component("dizo").build(Setup()).transforms[0].interval
    # and the text shows the same values
    out = _run(capsys)
    assert f"clip_norm: float | None = {clip_norm!r}" in out
    assert f"beta: float = {momentum.beta!r}" in out
