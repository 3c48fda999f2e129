"""Strict config loading, YAML round trip, overrides and CLI generation (ltc_control.config)."""

from __future__ import annotations

import argparse
import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from ltc_control.config import (
    ConfigError,
    add_dataclass_arguments,
    apply_overrides,
    dataclass_from_args,
    field_help,
    from_dict,
    load_yaml,
    make_parser,
    parse_args_and_config,
    parse_config,
    save_yaml,
    to_dict,
    yaml_load,
)


class Mode(enum.Enum):
    FAST = "fast"
    SLOW = "slow"


@dataclass(frozen=True)
class Inner:
    """Inner settings.

    Args:
        width: number of units.
        kind: which thing to build; spans
            two lines.
    """

    width: int = 8
    kind: Literal["ltc", "cfc"] = "ltc"


@dataclass(frozen=True)
class Outer:
    """A composed config used by the tests."""

    lr: float = field(default=1e-3, metadata={"help": "learning rate"})
    name: str = field(default="run", metadata={"help": "run name"})
    flag: bool = field(default=False, metadata={"help": "a switch"})
    sizes: tuple[int, ...] = field(default=(1, 2), metadata={"help": "sizes"})
    shape: tuple[int, int, int] = field(default=(3, 4, 5), metadata={"help": "a fixed shape"})
    opt: float | None = field(default=None, metadata={"help": "optional float"})
    mode: Mode = field(default=Mode.FAST, metadata={"help": "an enum"})
    extra: dict[str, int] = field(default_factory=dict, metadata={"help": "free mapping"})
    path: Path = field(default=Path("out"), metadata={"help": "a folder"})
    inner: Inner = field(default_factory=Inner, metadata={"help": "nested"})

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def test_from_dict_nested_and_conversions() -> None:
    cfg = from_dict(
        Outer,
        {"lr": 1, "sizes": [4, 5, 6], "mode": "slow", "inner": {"width": 3, "kind": "cfc"}, "path": "x/y"},
    )
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)  # int -> float widening
    assert cfg.sizes == (4, 5, 6)
    assert cfg.mode is Mode.SLOW
    assert cfg.inner == Inner(width=3, kind="cfc")
    assert cfg.path == Path("x/y")
    assert from_dict(Outer, {"mode": "FAST"}).mode is Mode.FAST  # enum by name too


def test_unknown_key_names_key_path_and_valid_keys() -> None:
    with pytest.raises(ConfigError) as exc:
        from_dict(Outer, {"inner": {"widht": 3}})
    msg = str(exc.value)
    assert "'inner.widht'" in msg
    assert "valid keys: width, kind" in msg
    with pytest.raises(ConfigError, match="unknown config key 'bogus'.*valid keys: lr, name, flag"):
        from_dict(Outer, {"bogus": 1})


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        ({"lr": "fast"}, r"lr: expected float, got str"),
        ({"inner": {"width": 2.5}}, r"inner.width: expected int, got float"),
        ({"inner": {"width": True}}, r"inner.width: expected int, got bool"),
        ({"flag": 1}, r"flag: expected bool"),
        ({"inner": {"kind": "lstm"}}, r"inner.kind: expected one of \['ltc', 'cfc'\], got 'lstm'"),
        ({"shape": [1, 2]}, r"shape: expected 3 items"),
        ({"sizes": [1, "a"]}, r"sizes\[1\]: expected int, got str"),
        ({"mode": "medium"}, r"mode: expected one of \['fast', 'slow'\]"),
        ({"inner": 3}, r"inner: expected a mapping for Inner, got int"),
        ({"extra": {"a": "b"}}, r"extra.a: expected int, got str"),
        ({"lr": -1.0}, r"lr must be > 0"),
    ],
)
def test_wrong_types_are_named(data: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        from_dict(Outer, data)


def test_optional_and_no_eval() -> None:
    assert from_dict(Outer, {"opt": None}).opt is None
    assert from_dict(Outer, {"opt": 2}).opt == 2.0
    with pytest.raises(ConfigError):
        from_dict(Outer, {"name": 3})
    # a string is never evaluated
    assert from_dict(Outer, {"name": "__import__('os')"}).name == "__import__('os')"


def test_yaml_round_trip(tmp_path: Path) -> None:
    cfg = Outer(
        lr=3e-4, sizes=(7,), opt=0.5, mode=Mode.SLOW, extra={"k": 2}, inner=Inner(width=5, kind="cfc")
    )
    save_yaml(cfg, tmp_path / "c.yaml")
    text = (tmp_path / "c.yaml").read_text()
    assert "mode: slow" in text
    assert load_yaml(Outer, tmp_path / "c.yaml") == cfg
    assert from_dict(Outer, to_dict(cfg)) == cfg


def test_yaml_reads_exponent_floats_and_file_errors(tmp_path: Path) -> None:
    assert yaml_load("3e-4") == pytest.approx(3e-4)
    assert yaml_load("1_000") == 1000 and yaml_load("v1") == "v1"
    p = tmp_path / "p.yaml"
    p.write_text("lr: 3e-4\ninner:\n  width: 16\n")
    cfg = load_yaml(Outer, p)
    assert cfg.lr == pytest.approx(3e-4) and cfg.inner.width == 16
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_yaml(Outer, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*not valid YAML"):
        load_yaml(Outer, bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("inner:\n  depth: 3\n")
    with pytest.raises(ConfigError, match=r"unknown.yaml.*'inner.depth'.*valid keys: width, kind"):
        load_yaml(Outer, unknown)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_yaml(Outer, empty) == Outer()


def test_overrides() -> None:
    cfg = apply_overrides(Outer(), ["lr=3e-4", "inner.kind=cfc", "sizes=[9, 8]", "opt=null", "extra.a=4"])
    assert cfg.lr == pytest.approx(3e-4)
    assert cfg.inner.kind == "cfc"
    assert cfg.sizes == (9, 8)
    assert cfg.opt is None
    assert cfg.extra == {"a": 4}
    assert apply_overrides(cfg, ["inner.kind=ltc", "inner.kind=cfc"]).inner.kind == "cfc"  # later wins
    with pytest.raises(ConfigError, match=r"'inner.depth'.*valid keys: width, kind"):
        apply_overrides(Outer(), ["inner.depth=2"])
    with pytest.raises(ConfigError, match=r"inner.width: expected int, got str"):
        apply_overrides(Outer(), ["inner.width=wide"])
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides(Outer(), ["lr"])
    with pytest.raises(ConfigError, match="has no sub-keys"):
        apply_overrides(Outer(), ["lr.x=1"])


def test_field_help_from_metadata_and_docstring() -> None:
    helps = field_help(Inner)
    assert helps == {"width": "number of units.", "kind": "which thing to build; spans two lines."}
    assert field_help(Outer)["lr"] == "learning rate"


def test_cli_generation_has_help_for_every_field() -> None:
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, Outer)
    text = parser.format_help()
    for flag, help_ in [
        ("--lr", "learning rate"),
        ("--inner.width", "number of units."),
        ("--inner.kind", "which thing to build"),
        ("--flag, --no-flag", "a switch"),
        ("--shape", "a fixed shape"),
    ]:
        assert flag in text and help_ in text
    for action in parser._actions:
        if action.dest != "help":
            assert action.help and "default:" in action.help, action.dest
    ns = parser.parse_args(["--lr", "0.5", "--inner.kind", "cfc", "--flag", "--shape", "1", "2", "3"])
    cfg = dataclass_from_args(Outer, ns)
    assert (cfg.lr, cfg.inner.kind, cfg.flag, cfg.shape) == (0.5, "cfc", True, (1, 2, 3))
    assert cfg.name == "run"  # untouched fields keep defaults
    prefixed = argparse.ArgumentParser()
    add_dataclass_arguments(prefixed, Inner, prefix="model")
    ns = prefixed.parse_args(["--model.width", "12"])
    assert dataclass_from_args(Inner, ns, prefix="model") == Inner(width=12)


def test_parse_config_precedence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    preset = tmp_path / "preset.yaml"
    preset.write_text("lr: 0.1\nname: from_yaml\ninner:\n  width: 32\n")
    cfg = parse_config(
        Outer, ["--config", str(preset), "--lr", "0.2", "--set", "inner.width=64", "--name", "123"]
    )
    assert cfg.lr == pytest.approx(0.2)  # flag beats YAML
    assert cfg.inner.width == 64  # --set beats everything
    assert cfg.name == "123"  # str flags keep the raw text
    parser = make_parser(Outer)
    parser.add_argument("--out", default="x")
    cfg2, ns = parse_args_and_config(Outer, ["--out", "y"], parser)
    assert cfg2 == Outer() and ns.out == "y"
    with pytest.raises(SystemExit):
        parse_config(Outer, ["--set", "inner.nope=1"])
    assert "valid keys: width, kind" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_config(Outer, ["--inner.kind", "lstm"])


def test_project_configs_document_every_field() -> None:
    import dataclasses

    from ltc_control.policy import PolicyConfig

    seen = []

    def walk(cls: type) -> None:
        for name, text in field_help(cls).items():
            assert len(text) > 8, f"{cls.__name__}.{name} has no help text"
            seen.append(name)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(f.default_factory):  # type: ignore[arg-type]
                walk(f.default_factory)  # type: ignore[arg-type]

    walk(PolicyConfig)
    assert len(seen) == 62  # Policy 7 + Perception 7 + Augment 13 + Controller 18 + Wiring 12 + ActionHead 5
    parser = make_parser(PolicyConfig)
    text = parser.format_help()
    assert "--controller.wiring.preset" in text and "--perception.augment.noise_std" in text
    cfg = parse_config(
        PolicyConfig,
        ["--controller.kind", "cfc", "--image_shape", "32", "64", "3", "--no-perception.standardize"],
    )
    assert cfg.controller.kind == "cfc" and cfg.image_shape == (32, 64, 3) and not cfg.perception.standardize
