"""Strict flags for `ds-prompt`: every flag is checked before any work starts, and `--help` is generated.

fire (the CLI library) calls a command with the arguments it could consume and only then complains about the
rest, so `ds-prompt evaluate --prompt P --limt 16` used to evaluate everything, write eval_<task>.json, and
then exit 2. `check_argv` runs first: it resolves the command path (`transfer matrix`, `spt train`, ...), reads
the flags the way fire does (`--name value`, `--name=value`, a bare `--flag` for true, `--noflag` for false,
`-` and `_` alike) and checks each against the target: a parameter of its signature, or, for commands that
take `**flags`, a field of the config class they build (`CONFIG_FLAGS`). Unknown names get a "did you mean";
values must parse as the annotated type; names in `CHOICES` must be one of their values; `--init` must be a
well-formed spec. Any failure is a `UserError` (one `ds-prompt: error:` line, exit 2, nothing written).

`help_text` renders `--help` from the same sources: the command's docstring, then every flag with its type,
default and, for config fields, the comment written beside the field in the dataclass, so the help cannot
drift from the config.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import re

from ds_prompt.config import CHOICES, GROUPS, check_value, field_type, parse_annotation
from ds_prompt.errors import UserError

# Commands whose **flags are the fields of a config class ("module:Class", imported only when checked).
CONFIG_FLAGS = {
    ("train",): "ds_prompt.config:TrainConfig",
    ("fpt",): "ds_prompt.config:TrainConfig",
    ("transfer", "speedup"): "ds_prompt.config:TrainConfig",
    ("library", "recommend"): "ds_prompt.config:TrainConfig",  # the probe run's train flags
    ("transfer", "library", "recommend"): "ds_prompt.config:TrainConfig",
    ("spt", "train"): "ds_prompt.recipes.spt:SPTConfig",
    ("projector", "train"): "ds_prompt.recipes.projector:ProjectorTrainConfig",
    ("transfer", "projector", "train"): "ds_prompt.recipes.projector:ProjectorTrainConfig",
}
# Left out of `--help` listings: the internal FPT stage job, and the former top-level spellings of commands
# that now live under `transfer` (still accepted).
HIDDEN = ("fpt_stage", "indicators", "projector", "library")


@dataclasses.dataclass
class Flag:
    name: str
    type: type | None        # None: any value (untyped parameter)
    optional: bool           # accepts None
    default: object
    doc: str = ""
    group: str = ""          # the config argument group that declares it ("" = the command's own)


def resolve(commands: dict, argv: list[str]) -> tuple[tuple[str, ...], object, list[str]]:
    """(command path, target function or group dict, the remaining arguments)."""
    node, path, i = commands, (), 0
    while isinstance(node, dict) and i < len(argv) and not argv[i].startswith("-"):
        name = argv[i]
        if name not in node:
            where = " ".join(("ds-prompt",) + path)
            choices = [c for c in node if not (path == () and c in HIDDEN)]
            hint = difflib.get_close_matches(name, choices, n=1)
            raise UserError(f"unknown command '{name}' for `{where}`"
                            + (f": did you mean '{hint[0]}'?" if hint else f": choose one of {', '.join(choices)}"))
        node, path, i = node[name], path + (name,), i + 1
    return path, node, argv[i:]


def _annotation_type(annotation, default) -> tuple[type | None, bool]:
    if annotation is inspect.Parameter.empty:
        if default is None or default is inspect.Parameter.empty:
            return None, True
        return type(default) if type(default) in (int, float, bool, str) else None, False
    return parse_annotation(annotation)


def _config_class(path: tuple[str, ...]):
    spec = CONFIG_FLAGS.get(path)
    if spec is None:
        return None
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def _field_comments(cls) -> dict[str, str]:
    """{field: the comment written beside it (and on the comment-only lines below it)} in `cls`'s source and
    its bases' (a recipe's own comment wins over its group's)."""
    comments = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        current = None
        try:
            lines = inspect.getsource(klass).splitlines()
        except (OSError, TypeError):
            continue
        for line in lines:
            m = re.match(r"\s+(\w+)\s*:\s*[^=#]+(?:=[^#]*)?(?:#\s*(.*))?$", line)
            if m and not line.strip().startswith("#"):
                current = m.group(1)
                if m.group(2) or current not in comments:
                    comments[current] = (m.group(2) or "").strip()
            elif current and re.match(r"\s+#", line):
                comments[current] = (comments[current] + " " + line.strip().lstrip("#").strip()).strip()
            else:
                current = None
    return comments


def _group_of(cls, name: str) -> str:
    """Which argument group (config.GROUPS) declares field `name` of `cls`; "" for the recipe's own fields."""
    for klass in cls.__mro__:
        if name in getattr(klass, "__annotations__", {}):
            return klass.__name__.removesuffix("Args").lower() if klass in GROUPS else ""
    return ""


def flags_of(path: tuple[str, ...], fn) -> dict[str, Flag]:
    """Every flag `fn` (reached by `path`) accepts: its parameters, plus its config's fields for **flags."""
    flags = {}
    takes_flags = False
    for p in inspect.signature(fn).parameters.values():
        if p.kind is p.VAR_KEYWORD:
            takes_flags = True
            continue
        if p.kind is p.VAR_POSITIONAL:
            continue
        kind, optional = _annotation_type(p.annotation, p.default)
        flags[p.name] = Flag(p.name, kind, optional or p.default is None, p.default)
    cls = _config_class(path) if takes_flags else None
    if cls is not None:
        comments = _field_comments(cls)
        for f in dataclasses.fields(cls):
            if f.name in flags:
                continue
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            flags[f.name] = Flag(f.name, field_type(f), parse_annotation(f.type)[1], default, comments.get(f.name, ""),
                                 _group_of(cls, f.name))
    elif takes_flags:
        return {}  # an unregistered **flags command: nothing to check against
    return flags


def _split(args: list[str]) -> tuple[list[tuple[str, str | None]], list[str]]:
    """([(flag name, raw value or None for a bare flag)], positional values), as fire reads them."""
    named, positional, i = [], [], 0
    while i < len(args):
        a = args[i]
        if a == "--":
            break
        if a.startswith("--") and len(a) > 2:
            name, eq, value = a[2:].partition("=")
            name = name.replace("-", "_")
            if eq:
                named.append((name, value))
            elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                named.append((name, args[i + 1]))
                i += 1
            else:
                named.append((name, None))
        else:
            positional.append(a)
        i += 1
    return named, positional


def check_argv(commands: dict, argv: list[str]) -> None:
    """UserError for the first bad flag in `argv` (see the module docstring); nothing has run yet."""
    path, target, rest = resolve(commands, argv)
    if isinstance(target, dict) or not callable(target):
        return  # a group without a subcommand: fire lists it
    flags = flags_of(path, target)
    if not flags:
        return
    where = "`ds-prompt " + " ".join(path) + "`"
    named, positional = _split(rest)
    given = set()
    for name, value in named:
        negated = flags.get(name[2:]) if name.startswith("no") and value is None else None
        if name not in flags and negated is not None and negated.type is bool:
            name, value = name[2:], "false"
        if name not in flags:
            hint = difflib.get_close_matches(name, list(flags), n=1, cutoff=0.6)
            raise UserError(f"unknown flag --{name} for {where}"
                            + (f": did you mean --{hint[0]}?" if hint else f" (see {where[:-1]} --help`)"))
        given.add(name)  # repeated: the last one wins, as in fire
        check_value(name, value, flags[name].type, flags[name].optional)
    free = [f for f in flags if f not in given]
    if len(positional) > len(free):
        extra = positional[len(free):]
        raise UserError(f"unexpected argument(s) {' '.join(extra)} for {where}: flags are written --name value")
    for name, value in zip(free, positional):
        check_value(name, value, flags[name].type, flags[name].optional)


def _type_name(flag: Flag) -> str:
    if flag.name in CHOICES:
        return "|".join(str(c) for c in CHOICES[flag.name] if c is not None)
    name = flag.type.__name__ if flag.type else "VALUE"
    return name.upper()


def help_text(commands: dict, argv: list[str]) -> str:
    """`--help` for the command `argv` names (a group: its subcommands)."""
    path, target, _ = resolve(commands, [a for a in argv if a not in ("--help", "-h")])
    title = "ds-prompt " + " ".join(path) if path else "ds-prompt"
    if isinstance(target, dict):
        lines = [f"usage: {title} <command> [--flags]", "", "commands:"]
        for name, sub in target.items():
            if path == () and name in HIDDEN:
                continue
            doc = "(group) " + ", ".join(sub) if isinstance(sub, dict) else \
                (inspect.getdoc(sub) or "").split("\n")[0]
            lines.append(f"  {name:<12} {doc}")
        lines += ["", f"`{title} <command> --help` describes one command."]
        return "\n".join(lines)
    lines = [f"usage: {title} [--flags]", "", inspect.getdoc(target) or ""]
    flags = list(flags_of(path, target).values())
    for group in [""] + [g for g in dict.fromkeys(f.group for f in flags) if g]:
        members = [f for f in flags if f.group == group]
        if not members:
            continue
        lines += ["", f"{group} flags (shared argument group):" if group else "flags:"]
        for flag in members:
            default = "required" if flag.default is inspect.Parameter.empty else f"default {flag.default!r}"
            text = f"  --{flag.name} {_type_name(flag)} ({default})"
            lines.append(text + (f"  {flag.doc}" if flag.doc else ""))
    return "\n".join(lines)
