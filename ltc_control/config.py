"""Frozen-dataclass configuration helpers: strict dict/YAML loading, overrides and a generated CLI.

Every concern (policy, controller, training, evaluation, ...) owns a frozen dataclass; a run config composes
them. The helpers here work for *any* tree of dataclasses, so other modules define their own configs and get
strict loading, ``key=value`` overrides and an argparse CLI with help text for free.

Type support (on dataclass fields, resolved with :func:`typing.get_type_hints`): ``bool``, ``int``, ``float``
(ints widen to float), ``str``, :class:`pathlib.Path`, :class:`enum.Enum` (by value or name),
``Literal[...]``, ``X | None`` and other unions, ``tuple[X, ...]``, fixed ``tuple[X, Y]``, ``list[X]``,
``dict[str, X]``, nested dataclasses and ``Any``. Nothing is ever ``eval``-ed.

Help text for a field comes from ``field(metadata={"help": "..."})`` or, failing that, from the ``Args:`` (or
``Attributes:``) section of the class docstring (Google style).

YAML note: PyYAML follows YAML 1.1, where ``3e-4`` (no dot) is a *string*. :func:`yaml_load` (used by
:func:`load_yaml`, overrides and the CLI) resolves such numbers as floats, as YAML 1.2 does.

Example:
    >>> from dataclasses import dataclass, field
    >>> @dataclass(frozen=True)
    ... class Train:
    ...     lr: float = field(default=1e-3, metadata={"help": "learning rate"})
    ...     epochs: int = 10
    >>> cfg = apply_overrides(Train(), ["lr=3e-4"])
    >>> cfg.lr
    0.0003
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import inspect
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from ltc_control.errors import ExpectedError

__all__ = [
    "ConfigError",
    "add_dataclass_arguments",
    "apply_overrides",
    "dataclass_from_args",
    "field_help",
    "from_dict",
    "load_yaml",
    "make_parser",
    "parse_args_and_config",
    "parse_config",
    "save_yaml",
    "to_dict",
    "to_yaml",
    "yaml_load",
]

T = TypeVar("T")


class ConfigError(ExpectedError, ValueError):
    """A configuration value, key or file is invalid; the message names the key path and the fix."""


# ---------------------------------------------------------------------------------------------- YAML loading
class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3``-style numbers (no dot) as floats, as YAML 1.2 does."""


_FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
# Replace the float resolver (order matters: resolvers are tried in insertion order per first character).
_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _ch in list("-+0123456789."):
    _Loader.yaml_implicit_resolvers[_ch] = [
        r for r in _Loader.yaml_implicit_resolvers.get(_ch, []) if r[0] != "tag:yaml.org,2002:float"
    ]
    _Loader.yaml_implicit_resolvers[_ch].append(("tag:yaml.org,2002:float", _FLOAT_RE))


def yaml_load(text: str) -> Any:
    """Parse YAML text safely (no object construction), reading ``3e-4`` as a float.

    Args:
        text: YAML document.

    Returns:
        The parsed Python value (dict, list, str, int, float, bool or None).
    """
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader derives from SafeLoader


# ------------------------------------------------------------------------------------------- type conversion
def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _value_type(value: Any) -> str:
    return type(value).__name__


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _is_union(tp: Any) -> bool:
    origin = typing.get_origin(tp)
    return origin is Union or origin is types.UnionType


def _convert(tp: Any, value: Any, path: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted (tuples, enums, widened floats)."""
    where = path or "<root>"
    if tp is Any or tp is object:
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(
                f"{where}: expected a mapping for {tp.__name__}, got {_value_type(value)} ({value!r})"
            )
        return from_dict(tp, value, path)
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected null, got {_value_type(value)} ({value!r})")
        return None
    origin = typing.get_origin(tp)
    if _is_union(tp):
        arms = typing.get_args(tp)
        if value is None:
            if type(None) in arms:
                return None
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got null")
        errors = []
        for arm in arms:
            if arm is type(None):
                continue
            try:
                return _convert(arm, value, path)
            except ConfigError as exc:
                errors.append(str(exc))
        if len(errors) == 1:
            raise ConfigError(errors[0])
        raise ConfigError(
            f"{where}: value {value!r} ({_value_type(value)}) matches none of {_type_name(tp)}: "
            + "; ".join(errors)
        )
    if origin is Literal:
        choices = typing.get_args(tp)
        for choice in choices:
            if value == choice and type(value) is type(choice):
                return choice
        raise ConfigError(f"{where}: expected one of {list(choices)}, got {value!r}")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if isinstance(value, tp):
            return value
        for member in tp:
            if value == member.value or value == member.name:
                return member
        raise ConfigError(f"{where}: expected one of {[m.value for m in tp]} ({tp.__name__}), got {value!r}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(
                f"{where}: expected a list for {_type_name(tp)}, got {_value_type(value)} ({value!r})"
            )
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, _join(path, i)) for i, v in enumerate(value))
        if len(args) == 0:
            return tuple(value)
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} items for {_type_name(tp)}, got {len(value)}")
        return tuple(_convert(a, v, _join(path, i)) for i, (a, v) in enumerate(zip(args, value)))
    if origin in (list, Sequence):
        (arg,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, list | tuple):
            raise ConfigError(
                f"{where}: expected a list for {_type_name(tp)}, got {_value_type(value)} ({value!r})"
            )
        return [_convert(arg, v, _join(path, i)) for i, v in enumerate(value)]
    if origin in (dict, Mapping):
        key_tp, val_tp = typing.get_args(tp) or (Any, Any)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {_value_type(value)} ({value!r})")
        return {_convert(key_tp, k, path): _convert(val_tp, v, _join(path, str(k))) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected bool (true/false), got {_value_type(value)} ({value!r})")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected int, got {_value_type(value)} ({value!r})")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected float, got {_value_type(value)} ({value!r})")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected str, got {_value_type(value)} ({value!r})")
        return value
    if tp is Path:
        if isinstance(value, Path):
            return value
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a path string, got {_value_type(value)} ({value!r})")
        return Path(value)
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise ConfigError(f"{where}: expected {tp.__name__}, got {_value_type(value)} ({value!r})")
    raise ConfigError(f"{where}: unsupported annotation {_type_name(tp)} in a config dataclass")


def _fields(cls: type) -> dict[str, tuple[dataclasses.Field[Any], Any]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls) if f.init}


def from_dict(cls: type[T], data: Mapping[str, Any], path: str = "") -> T:
    """Build a (frozen) dataclass from a plain mapping, strictly.

    Missing keys take the field defaults; unknown keys and wrong types raise :class:`ConfigError`.

    Args:
        cls: the dataclass type to build (any dataclass; nested dataclass fields are built recursively).
        data: mapping from field name to value (e.g. parsed YAML).
        path: dotted location of ``data`` inside a larger config, used in error messages.

    Returns:
        An instance of ``cls``.

    Raises:
        ConfigError: an unknown key (the message lists the valid keys), a missing required key, a value of the
            wrong type (naming the key, the expected and the actual type) or a value the dataclass rejects.
    """
    if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
        raise TypeError(f"from_dict needs a dataclass type, got {cls!r}")
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{path or '<root>'}: expected a mapping for {cls.__name__}, got {_value_type(data)}"
        )
    fields = _fields(cls)
    unknown = [k for k in data if k not in fields]
    if unknown:
        where = f" in {path}" if path else ""
        raise ConfigError(
            f"unknown config key {', '.join(repr(_join(path, str(k))) for k in unknown)}{where} "
            f"({cls.__name__}); valid keys: {', '.join(fields)}"
        )
    kwargs: dict[str, Any] = {}
    for name, (f, tp) in fields.items():
        if name in data:
            kwargs[name] = _convert(tp, data[name], _join(path, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required config key {_join(path, name)!r} ({cls.__name__})")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path or cls.__name__}: {exc}") from exc


def to_dict(cfg: Any) -> Any:
    """Convert a dataclass tree to plain YAML/JSON-ready values.

    Tuples become lists, enums their values, paths strings; dicts and lists are converted recursively.

    Args:
        cfg: a dataclass instance (or any value nested inside one).

    Returns:
        A ``dict`` for a dataclass, otherwise the converted value.
    """
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, enum.Enum):
        return to_dict(cfg.value)
    if isinstance(cfg, Path):
        return str(cfg)
    if isinstance(cfg, Mapping):
        return {str(k) if not isinstance(k, int | str) else k: to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, list | tuple):
        return [to_dict(v) for v in cfg]
    if hasattr(cfg, "item") and callable(cfg.item) and getattr(cfg, "shape", None) == ():
        return cfg.item()  # numpy / torch scalars
    return cfg


def to_yaml(cfg: Any) -> str:
    """Serialise a dataclass tree to YAML text (keys in field order)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)


def save_yaml(cfg: Any, path: str | Path) -> None:
    """Write ``cfg`` as YAML to ``path`` atomically (temp file + rename).

    Args:
        cfg: a dataclass instance (or plain mapping).
        path: destination file.
    """
    from ltc_control.atomic import atomic_write_text

    atomic_write_text(path, to_yaml(cfg))


def load_yaml(cls: type[T], path: str | Path) -> T:
    """Load a YAML file strictly into the dataclass ``cls``.

    Args:
        cls: dataclass type of the document's root.
        path: YAML file; an empty file gives the defaults.

    Returns:
        An instance of ``cls``.

    Raises:
        FileNotFoundError: the file does not exist (the message names it).
        ConfigError: the YAML is malformed or does not match ``cls`` (the message names the file and the key).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file {str(p)!r} not found (expected a YAML file for {cls.__name__})")
    try:
        data = yaml_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file {str(p)!r}: top level must be a mapping, got {_value_type(data)}")
    try:
        return from_dict(cls, data)
    except ConfigError as exc:
        raise ConfigError(f"config file {str(p)!r}: {exc}") from exc


# ------------------------------------------------------------------------------------------------- overrides
def _split_override(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.path=value (e.g. train.lr=3e-4)")
    key, text = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key; expected key.path=value")
    return key, text


def _set_dotted(tree: dict[str, Any], cls: Any, parts: list[str], value: Any, full: str) -> None:
    """Set ``tree[parts...] = value``, checking each key against the dataclass ``cls`` on the way down."""
    head, rest = parts[0], parts[1:]
    if dataclasses.is_dataclass(cls) and isinstance(cls, type):
        fields = _fields(cls)
        if head not in fields:
            prefix = full[: len(full) - len(".".join(parts))].rstrip(".")
            raise ConfigError(
                f"unknown config key {full!r}: {head!r} is not a field of {cls.__name__}"
                f"{' at ' + repr(prefix) if prefix else ''}; valid keys: {', '.join(fields)}"
            )
        sub_tp = fields[head][1]
    else:
        sub_tp = Any
    if not rest:
        tree[head] = value
        return
    # Optional[Dataclass]: descend into the dataclass arm.
    if _is_union(sub_tp):
        arms = [a for a in typing.get_args(sub_tp) if dataclasses.is_dataclass(a)]
        sub_tp = arms[0] if len(arms) == 1 else Any
    child = tree.get(head)
    if child is None:
        if not (
            dataclasses.is_dataclass(sub_tp) or typing.get_origin(sub_tp) in (dict, Mapping) or sub_tp is Any
        ):
            raise ConfigError(f"override {full!r}: {head!r} is a {_type_name(sub_tp)}, it has no sub-keys")
        child = {}
    if not isinstance(child, dict):
        raise ConfigError(f"override {full!r}: {head!r} holds {child!r}, which has no sub-keys")
    child = dict(child)
    tree[head] = child
    _set_dotted(child, sub_tp, rest, value, full)


def apply_overrides(cfg: T, overrides: Sequence[str]) -> T:
    """Return a copy of ``cfg`` with dotted ``key=value`` overrides applied and validated.

    Values are parsed as YAML (``3e-4`` -> float, ``[1, 2]`` -> list, ``null`` -> None, ``cfc`` -> str), then
    the whole config is re-validated with :func:`from_dict`.

    Args:
        cfg: a dataclass instance.
        overrides: items like ``"train.lr=3e-4"`` or ``"policy.controller.kind=cfc"``; later items win.

    Returns:
        A new instance of ``type(cfg)``.

    Raises:
        ConfigError: a malformed item, an unknown key (valid keys listed) or a value of the wrong type.
    """
    if not overrides:
        return cfg
    cls = type(cfg)
    tree = to_dict(cfg)
    for item in overrides:
        key, text = _split_override(item)
        try:
            value = yaml_load(text) if text.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({exc})") from exc
        _set_dotted(tree, cls, key.split("."), value, key)
    return from_dict(cls, tree)


# -------------------------------------------------------------------------------------------- CLI generation
_ARGS_RE = re.compile(r"^\s*(Args|Arguments|Attributes|Parameters):\s*$")


def _docstring_help(cls: type) -> dict[str, str]:
    """Parse the ``Args:``/``Attributes:`` section of a Google-style class docstring into {name: text}."""
    doc = inspect.getdoc(cls) or ""
    out: dict[str, str] = {}
    lines = doc.splitlines()
    in_section = False
    indent: int | None = None
    current: str | None = None
    for line in lines:
        if _ARGS_RE.match(line):
            in_section, indent, current = True, None, None
            continue
        if not in_section:
            continue
        if not line.strip():
            continue
        this_indent = len(line) - len(line.lstrip())
        if this_indent == 0:  # next section
            in_section = False
            continue
        if indent is None:
            indent = this_indent
        m = re.match(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(\([^)]*\))?\s*:\s*(.*)$", line)
        if this_indent == indent and m:
            current = m.group(1)
            out[current] = m.group(3).strip()
        elif current is not None:
            out[current] = (out[current] + " " + line.strip()).strip()
    return out


def field_help(cls: type) -> dict[str, str]:
    """Help text of each field of a dataclass (metadata ``help`` first, else the class docstring).

    Args:
        cls: a dataclass type.

    Returns:
        Mapping from field name to help text; fields without any documentation map to ``""``.
    """
    doc = {}
    for klass in reversed(cls.__mro__):  # inherited fields keep their parent's docs unless overridden
        if dataclasses.is_dataclass(klass):
            doc.update(_docstring_help(klass))
    return {
        f.name: str(f.metadata.get("help", doc.get(f.name, ""))) for f in dataclasses.fields(cls) if f.init
    }


def _leaf_fields(cls: type, prefix: str = "") -> list[tuple[str, Any, dataclasses.Field[Any], str]]:
    """(dotted name, annotation, field, help) for each non-dataclass field, depth first."""
    out = []
    helps = field_help(cls)
    for name, (f, tp) in _fields(cls).items():
        dotted = _join(prefix, name)
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            out.extend(_leaf_fields(tp, dotted))
        else:
            out.append((dotted, tp, f, helps[name]))
    return out


def _default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _cli_value(text: str) -> Any:
    try:
        return yaml_load(text) if text.strip() else ""
    except yaml.YAMLError as exc:
        raise argparse.ArgumentTypeError(f"not valid YAML: {exc}") from exc


def _scalar_item_type(tp: Any) -> Any | None:
    """Item type when ``tp`` is a homogeneous tuple/list of scalars (for ``nargs='+'``), else None."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is tuple and args and (args[-1] is Ellipsis or len(set(args)) == 1):
        item = args[0]
    elif origin is list and args:
        item = args[0]
    else:
        return None
    return item if item in (int, float, str, bool) else None


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    """Add one ``--dotted.name`` flag per leaf field of the dataclass tree ``cls``.

    Flags only override what is given (their default is "not given"); values are parsed as YAML and validated
    by :func:`dataclass_from_args`. Booleans get ``--name/--no-name``; ``Literal`` fields list their choices;
    tuples/lists of scalars take several values (``--channels 24 36 48``). Each flag's help is the field's
    help text plus its type and default.

    Args:
        parser: the parser to extend (a new argument group named after ``cls`` is added).
        cls: a dataclass type.
        prefix: dotted prefix for the flag names (e.g. ``"train"`` gives ``--train.lr``).
    """
    group = parser.add_argument_group(f"{cls.__name__} options" + (f" ({prefix})" if prefix else ""))
    for dotted, tp, f, help_text in _leaf_fields(cls, prefix):
        default = _default_of(f)
        shown = "required" if default is dataclasses.MISSING else repr(to_dict(default))
        text = f"{help_text or dotted} [{_type_name(tp)}; default: {shown}]".replace("%", "%%")
        flag = f"--{dotted}"
        kwargs: dict[str, Any] = {"dest": dotted, "default": argparse.SUPPRESS, "help": text}
        if tp is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if typing.get_origin(tp) is Literal:
            kwargs["choices"] = list(typing.get_args(tp))
            kwargs["type"] = _cli_value
            kwargs["metavar"] = "{" + ",".join(str(c) for c in typing.get_args(tp)) + "}"
        elif _scalar_item_type(tp) is not None:
            kwargs["nargs"] = "+"
            kwargs["type"] = _cli_value
        else:
            kwargs["type"] = _cli_value
        if tp in (str, Path) or (_is_union(tp) and {str, Path} & set(typing.get_args(tp))):
            kwargs["type"] = _str_or_yaml(tp)
        group.add_argument(flag, **kwargs)


def _str_or_yaml(tp: Any) -> Any:
    """Parser for a str(-able) field: keep the raw text unless it is an explicit ``null``."""

    def parse(text: str) -> Any:
        if _is_union(tp) and type(None) in typing.get_args(tp) and text.strip() in ("null", "~", "None"):
            return None
        return text

    return parse


def dataclass_from_args(
    cls: type[T], namespace: argparse.Namespace, base: T | None = None, prefix: str = ""
) -> T:
    """Build ``cls`` from flags added by :func:`add_dataclass_arguments`, on top of ``base`` (or the
    defaults).

    Args:
        cls: the dataclass type the flags were generated from.
        namespace: parsed arguments.
        base: config the flags override; ``cls()`` when None.
        prefix: the prefix given to :func:`add_dataclass_arguments`.

    Returns:
        The validated config.

    Raises:
        ConfigError: a flag value of the wrong type (the message names the flag).
    """
    tree = to_dict(base if base is not None else cls())
    given = vars(namespace)
    for dotted, _, _, _ in _leaf_fields(cls, prefix):
        if dotted in given:
            key = dotted[len(prefix) + 1 :] if prefix else dotted
            _set_dotted(tree, cls, key.split("."), to_dict(given[dotted]), dotted)
    try:
        return from_dict(cls, tree)
    except ConfigError as exc:
        raise ConfigError(f"command-line option --{exc}") from exc


def make_parser(
    cls: type, description: str | None = None, prog: str | None = None
) -> argparse.ArgumentParser:
    """An argparse parser with ``--config``, ``--set`` and one generated flag per field of ``cls``.

    Args:
        cls: the run-config dataclass.
        description: parser description (defaults to the first line of the class docstring).
        prog: program name shown in usage.

    Returns:
        The parser; callers may add their own non-config arguments before parsing.
    """
    desc = description or (inspect.getdoc(cls) or "").split("\n\n")[0]
    parser = argparse.ArgumentParser(prog=prog, description=desc)
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="YAML",
        help="YAML preset loaded first (unknown keys are errors); flags and --set override it",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dotted override applied last, value parsed as YAML (repeatable), e.g. --set train.lr=3e-4",
    )
    add_dataclass_arguments(parser, cls)
    return parser


def parse_args_and_config(
    cls: type[T], argv: Sequence[str] | None = None, parser: argparse.ArgumentParser | None = None
) -> tuple[T, argparse.Namespace]:
    """Parse ``argv`` into a config: defaults < ``--config`` YAML < generated flags < ``--set`` overrides.

    Args:
        cls: the run-config dataclass.
        argv: arguments without the program name (``sys.argv[1:]`` when None).
        parser: a parser from :func:`make_parser` (possibly with extra arguments); built when None.

    Returns:
        The validated config and the parsed namespace (for the caller's extra arguments).

    Raises:
        SystemExit: argparse errors (bad flags, invalid config values), with the message on stderr.
    """
    parser = parser or make_parser(cls)
    ns = parser.parse_args(None if argv is None else list(argv))
    try:
        base = load_yaml(cls, ns.config) if ns.config is not None else None
        cfg = dataclass_from_args(cls, ns, base)
        cfg = apply_overrides(cfg, ns.overrides)
    except (ConfigError, FileNotFoundError) as exc:
        # one line naming the key and the fix (no usage dump: the flags were well-formed, a value was not)
        message = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        parser.exit(2, f"{parser.prog}: error: {message}\n")
    return cfg, ns


def parse_config(cls: type[T], argv: Sequence[str] | None = None, description: str | None = None) -> T:
    """Parse a command line into ``cls`` (see :func:`parse_args_and_config` for the precedence).

    Args:
        cls: the run-config dataclass.
        argv: arguments without the program name (``sys.argv[1:]`` when None).
        description: help description.

    Returns:
        The validated config.
    """
    cfg, _ = parse_args_and_config(cls, argv, make_parser(cls, description))
    return cfg
