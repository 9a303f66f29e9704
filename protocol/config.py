"""A daemon's configuration: one frozen dataclass, read from TOML, every key a flag.

The agent, hostd and the controller each describe their settings as a frozen
dataclass whose fields carry a docstring (the string literal under the field)
and a type. This module turns such a class into a configuration loader:

* :func:`from_mapping` builds the dataclass from parsed TOML (plus flags),
  converting by each field's type: ``str``, ``int``, ``float``, ``bool`` (TOML's
  true/false, or a flag's ``true``/``yes``/``on``/``1`` and their opposites),
  ``tuple[str, ...]`` (a list, or a comma-separated flag), ``Mapping[str, str]``
  (a table of strings), a nested dataclass (a ``[table]``) and a tuple of
  dataclasses (an array of ``[[tables]]``). Unknown keys are refused by name.
* :func:`add_field_flags` gives every plain field a ``--flag`` whose help is the
  field's docstring and default (parsed from the source only when help is shown:
  at every start it would cost a slow guest's agent a tenth of a second).
* :func:`load` reads the file (``--config``, else the daemon's default path when
  it exists) and lets flags win over it.
* :func:`dump_toml` writes a configuration back as a commented TOML file.

A field's ``metadata`` may say ``{"key": "vm"}`` (its TOML key differs from its
name, as ``[[vm]]`` for ``vms``) or ``{"secret_env": "LQX_..."}`` (a secret: never
a flag, since a command line is visible to every user in ``ps``; the environment
variable wins over the file). A validation error raised by the dataclass itself
(its ``__post_init__``) is a :class:`ConfigError` too.

:class:`ConfigError` and the file reader live in :mod:`._configfile`, which the operators'
clients share (their profiles are read on every ``limiquantix exec``, which cannot pay
for this module's imports); this module is the daemons' side.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar, get_args, get_origin, get_type_hints

from ._configfile import ConfigError, read_toml, secret_flag_refused

__all__ = [
    "ConfigError",
    "FieldHelpFormatter",
    "add_field_flags",
    "check_listen",
    "check_log_format",
    "check_server_tls",
    "check_together",
    "dump_toml",
    "field_docs",
    "from_mapping",
    "load",
]

T = TypeVar("T")

#: A flag's or a string's words for true and false.
_BOOLEAN_WORDS: Final = {
    "true": True, "yes": True, "on": True, "1": True,
    "false": False, "no": False, "off": False, "0": False,
}  # fmt: skip
#: Marks a field flag's help text, filled in by FieldHelpFormatter when help is shown.
_FIELD_HELP: Final = "\0field:"
#: The classes whose fields have flags, by the key their help markers carry.
_HELP_CLASSES: dict[str, type] = {}


# ------------------------------------------------------------------ checks the daemons share


def check_listen(value: str, key: str = "listen") -> None:
    """An address to listen on, ``host:port``.

    Raises:
        ConfigError: anything else (named by ``key``).
    """
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"{key} must be host:port, not {value!r}")


def check_log_format(value: str) -> None:
    """``log_format``: what :mod:`limiquantix.protocol._logs` writes, ``text`` or ``json``.

    Raises:
        ConfigError: anything else.
    """
    if value not in ("text", "json"):
        raise ConfigError("log_format must be text or json")


def check_together(config: object, first: str, second: str) -> None:
    """Two keys set together or not at all (a certificate and its key).

    Raises:
        ConfigError: one is set without the other.
    """
    if bool(getattr(config, first)) != bool(getattr(config, second)):
        raise ConfigError(f"{first} and {second} go together")


def check_server_tls(config: object) -> None:
    """A daemon's ``tls_cert_file``, ``tls_key_file`` and ``tls_client_ca_file``: the first two
    together, the CA (client certificates) only with them.

    Raises:
        ConfigError: what is missing, named.
    """
    check_together(config, "tls_cert_file", "tls_key_file")
    cert, client_ca = (getattr(config, f"tls_{name}_file") for name in ("cert", "client_ca"))
    if client_ca and not cert:
        raise ConfigError("tls_client_ca_file needs tls_cert_file and tls_key_file")


# ------------------------------------------------------------------ field facts


def _field_docs(cls: type) -> dict[str, str]:
    """A dataclass's attribute docstrings (the string literal under each field), on one line each.

    Parsed from the source: for ``--help`` and ``dump_toml`` only. RST markup (````x````) is
    dropped: the text goes to a terminal.
    """
    import ast
    import inspect
    import textwrap

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):  # pragma: no cover - no source shipped
        return {}
    docs: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for stmt, after in zip(body, body[1:], strict=False):
        if (
            isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
            and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)
        ):  # fmt: skip
            docs[stmt.target.id] = " ".join(after.value.value.split()).replace("``", "")
    return docs


#: :func:`_field_docs`, once per class (typed as :data:`_hints` is, for the same reason).
field_docs: Callable[[type], dict[str, str]] = functools.cache(_field_docs)


def _hints_of(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


# Typed here: functools.cache's wrapper takes Hashable arguments, which mypy does not see in type[T].
_hints: Callable[[type], dict[str, Any]] = functools.cache(_hints_of)


def _fields(cls: type) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _key(field: dataclasses.Field[Any]) -> str:
    """The field's TOML key (its name unless its metadata names another)."""
    return str(field.metadata.get("key", field.name))


def _dataclass_item(hint: Any) -> type | None:
    """The dataclass of a ``tuple[SomeDataclass, ...]`` hint, else None."""
    if get_origin(hint) is tuple:
        args = get_args(hint)
        if args and dataclasses.is_dataclass(args[0]):
            return args[0]  # type: ignore[return-value]
    return None


def _is_table(hint: Any) -> bool:
    """A nested dataclass or a tuple of them: TOML tables, never flags."""
    return (isinstance(hint, type) and dataclasses.is_dataclass(hint)) or _dataclass_item(hint) is not None


# ---------------------------------------------------------------- from a mapping


def _coerce(name: str, hint: Any, value: Any, where: str) -> Any:
    """``value`` (from TOML or a flag) as the type ``hint``.

    Raises:
        ConfigError: the value cannot be that type (the message names the key).
    """
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return from_mapping(hint, value, where=name)
    item = _dataclass_item(hint)
    if item is not None:
        if not isinstance(value, list):
            raise ConfigError(f"[[{name}]] must be an array of tables")
        return tuple(from_mapping(item, v, where=f"[{name}]") for v in value)
    origin = get_origin(hint)
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in (p.strip() for p in value.split(",")) if v]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{name} must be a list of strings")
        return tuple(value)
    if origin is Mapping or origin is dict:
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(f"{name} must be a table of strings")
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _BOOLEAN_WORDS:
            return _BOOLEAN_WORDS[value.lower()]
        raise ConfigError(f"{name} must be true or false")
    if hint is int or hint is float:
        # TOML's 5 is a fine float; its 5.0 is no int. A flag's string is parsed.
        taken = int if hint is int else (int, float)
        if isinstance(value, taken) and not isinstance(value, bool):
            return hint(value)
        if isinstance(value, str):
            try:
                return hint(value)
            except ValueError:
                pass
        raise ConfigError(f"{name} must be {'a whole number' if hint is int else 'a number'}, not {_shown(value)}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{name} must be a string")
    raise AssertionError(f"{where or 'config'}.{name}: no conversion for {hint!r}")  # pragma: no cover


def _shown(value: Any) -> str:
    """A bad value in an error message: its type for tables and lists, else itself (cut short)."""
    if isinstance(value, (dict, list)):
        return f"a {'table' if isinstance(value, dict) else 'list'}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _flatten(data: Mapping[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value))
        else:
            flat[key] = value
    return flat


def from_mapping(cls: type[T], data: Any, *, where: str = "", group_tables: bool = False) -> T:
    """``cls`` from parsed TOML (plus flags), each value converted by its field's type.

    Args:
        cls: the configuration dataclass.
        data: its keys (``-`` in a key reads as ``_``).
        where: the table ``data`` came from (empty: the top level), named in errors.
        group_tables: tables only group keys for readability (the agent's file:
            ``[exec]`` then ``exec_default_timeout_s = 30``), rather than being nested
            dataclasses.

    Raises:
        ConfigError: ``data`` is not a table, a key is unknown, a value has the wrong
            type, or ``cls`` refuses the values.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"[{where}] must be a table")
    if group_tables:
        data = _flatten(data)
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    by_key = {_key(f): f for f in _fields(cls).values()}
    unknown = sorted(set(data) - set(by_key))
    if unknown:
        if not where:
            raise ConfigError(f"unknown configuration keys: {', '.join(unknown)}")
        raise ConfigError(f"unknown key {unknown[0]!r} in [{where}] (known: {', '.join(by_key)})")
    hints = _hints(cls)
    kwargs = {by_key[k].name: _coerce(k, hints[by_key[k].name], v, where) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required key is missing
        raise ConfigError(f"[{where}]: {exc}" if where else str(exc)) from exc


# --------------------------------------------------------------------- flags


class FieldHelpFormatter(argparse.HelpFormatter):
    """Reads a field flag's help (its docstring and default) only when help is shown."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help
        if help_text is not None and help_text.startswith(_FIELD_HELP):
            owner, _, name = help_text[len(_FIELD_HELP) :].partition(":")
            return _field_help(_HELP_CLASSES[owner], name)
        return help_text


def _field_help(cls: type, name: str) -> str:
    field = _fields(cls)[name]
    default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
    text = field_docs(cls).get(name, "")
    if get_origin(_hints(cls)[name]) is tuple:
        text += " Comma-separated."
        if default is not dataclasses.MISSING:  # a required list has no default to join
            default = ",".join(default)
    if default != "":  # an empty default (none, or nothing) goes without saying
        text += f" (default: {default!s})"
    # argparse %-formats help strings.
    return text.replace("%", "%%")


class _RefuseSecret(argparse.Action):
    """A secret as a flag: refused with the reason (a command line is visible in ``ps``).

    Its ``metavar`` carries the environment variable to use instead (the flag is hidden
    from help, so the metavar is shown nowhere else).
    """

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: str | None = None) -> None:
        instead = f"--{self.dest.replace('_', '-')}-file FILE or the environment variable {self.metavar}"
        parser.error(secret_flag_refused(option or "", instead))


def add_field_flags(parser: argparse.ArgumentParser, cls: type, *, only: Sequence[str] | None = None) -> None:
    """One ``--flag`` per field of ``cls`` (``only``: these fields), flags over the file.

    Tables (nested dataclasses) get no flags. A boolean flag alone means true
    (``--metrics-open``) and takes a value too (``--metrics-open false``). A secret's flag
    is refused with the reason. The help comes from the field's docstring when
    ``parser`` uses :class:`FieldHelpFormatter`.
    """
    owner = f"{cls.__module__}.{cls.__qualname__}"
    _HELP_CLASSES[owner] = cls
    hints = _hints(cls)
    for name, field in _fields(cls).items():
        if (only is not None and name not in only) or _is_table(hints[name]):
            continue
        flag = "--" + _key(field).replace("_", "-")
        env = field.metadata.get("secret_env")
        if env:
            parser.add_argument(flag, dest=name, action=_RefuseSecret, default=argparse.SUPPRESS,
                                metavar=env, help=argparse.SUPPRESS)  # fmt: skip
            continue
        extra: dict[str, Any] = {"nargs": "?", "const": "true"} if hints[name] is bool else {}
        parser.add_argument(flag, dest=name, default=argparse.SUPPRESS, metavar=name.upper(),
                            help=f"{_FIELD_HELP}{owner}:{name}", **extra)  # fmt: skip


def load(
    cls: type[T],
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    default_path: Path,
    *,
    group_tables: bool = False,
    merge_flags: Callable[[dict[str, Any], dict[str, Any]], None] | None = None,
) -> tuple[T, dict[str, Any]]:
    """The configuration from the file and the flags, and the flags that are no field.

    ``parser`` has a ``--config`` option and the fields' flags (:func:`add_field_flags`).
    ``merge_flags(data, flags)`` may move flags of its own into the file's data before
    the flags that name fields win over it (hostd's ``--vm`` joins the ``[[vm]]`` tables).
    A secret's environment variable wins over the file.

    Raises:
        ConfigError: the file is unreadable or invalid, or a value is.
    """
    flags = vars(parser.parse_args(argv))
    data = read_toml(flags.pop("config", None), default_path)
    if group_tables:
        data = _flatten(data)
    if merge_flags is not None:
        merge_flags(data, flags)
    names = _fields(cls)
    by_name = {name: _key(f) for name, f in names.items()}
    others = {k: flags.pop(k) for k in list(flags) if k not in names}
    data.update({by_name[k]: v for k, v in flags.items()})
    for field in names.values():
        env = field.metadata.get("secret_env")
        if env and os.environ.get(env):
            data[_key(field)] = os.environ[env]
    return from_mapping(cls, data, group_tables=group_tables), others


# ---------------------------------------------------------------------- dump


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return "[" + ", ".join(_toml_value(v) for v in value) + "]"


def _dump_fields(config: Any, lines: list[str]) -> list[tuple[str, Any]]:
    """Writes ``config``'s plain fields, each under its docstring; returns its tables."""
    docs = field_docs(type(config))
    hints = _hints(type(config))
    tables = []
    for name, field in _fields(type(config)).items():
        if _is_table(hints[name]):
            tables.append((_key(field), getattr(config, name)))
            continue
        if field.metadata.get("secret_env"):
            continue  # a secret is never written out
        lines.append(f"# {docs.get(name, '')}")
        lines.append(f"{_key(field)} = {_toml_value(getattr(config, name))}")
        lines.append("")
    return tables


def dump_toml(config: Any, title: str) -> str:
    """``config`` as a TOML file that reads back as the same configuration, every key under
    its docstring as a comment (secrets left out).
    """
    lines = [f"# {title}", ""]
    for key, value in _dump_fields(config, lines):
        # No configuration nests tables inside tables: one level is written.
        for item in value if isinstance(value, tuple) else (value,):
            lines.append(f"[[{key}]]" if isinstance(value, tuple) else f"[{key}]")
            _dump_fields(item, lines)
    return "\n".join(lines)
