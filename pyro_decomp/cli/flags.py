"""The flags of ``pyro-decomp``: argument types that name the flag in their errors, one flag per
:class:`~pyro_decomp.config.RunConfig` field, and the run configuration they give."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
from typing import Any, Dict, List

from pyro_decomp.config import (
    DATASET_DEFAULTS,
    INT_MAXIMUM,
    OWN_DATA_DEFAULTS,
    RECORDS,
    RunConfig,
    check_device_name,
    setting_kind,
)
from pyro_decomp.runs import load_config

EXIT_INTERRUPTED = 130

# older spellings of some flags, still accepted
_ALIASES = {
    "num_threads": ("--threads",),
    "data_options": ("--data-option",),
    "prior_options": ("--prior-option",),
    "network_options": ("--network-option",),
}
# train flags that steer the command rather than set the run
RUN_FLAGS = ("config", "run_dir", "resume", "overwrite", "no_progress", "no_figures", "tensorboard")


# ------------------------------------------------------------------------------------------- argument types
def number(kind, name, lower=None, strict=False, upper=None):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name} must be {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{name} must be a finite number, got {text!r}")
        if lower is not None and (value <= lower if strict else value < lower):
            raise argparse.ArgumentTypeError(f"{name} must be {'>' if strict else '>='} {lower}, got {text}")
        if upper is not None and value > upper:
            raise argparse.ArgumentTypeError(f"{name} must be <= {upper}, got {text}")
        return value

    parse.__name__ = name  # argparse names the type in its messages
    return parse


def key_value(text: str):
    """``KEY=VALUE`` with VALUE parsed as JSON when it is JSON (numbers, true/false, lists, objects)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.strip().replace("-", "_"), parsed


def device_name(text: str) -> str:
    try:
        return check_device_name(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults; for settings that depend on the data set, the default of each data set."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = getattr(action, "config_default", argparse.SUPPRESS)
        if action.dest in DATASET_DEFAULTS["pinwheel"]:
            groups: Dict[str, List[str]] = {}
            for dataset, values in DATASET_DEFAULTS.items():
                groups.setdefault(repr(values[action.dest]), []).append(dataset)
            own = OWN_DATA_DEFAULTS.get(action.dest, "chosen from the data")
            groups.setdefault(own if isinstance(own, str) else repr(own), []).append("own data")
            per = "; ".join(f"{'/'.join(names)}: {value}" for value, names in groups.items())
            return f"{text} (default: per data set -- {per})"
        if default is not argparse.SUPPRESS:
            return text if default in (None, {}) else f"{text} (default: {default})"
        if action.default is None or action.default is argparse.SUPPRESS or action.default is False:
            return text
        return super()._get_help_string(action)


def config_flag(name: str) -> str:
    """The train flag of a :class:`~pyro_decomp.config.RunConfig` field: its name with dashes."""
    return "--" + name.replace("_", "-")


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`~pyro_decomp.config.RunConfig` field, typed and checked from its metadata."""
    group = parser.add_argument_group("run settings (one per field of RunConfig)")
    for f in dataclasses.fields(RunConfig):
        if f.name in RECORDS:  # written by the run, not set
            continue
        kind, _ = setting_kind(f)
        flag = config_flag(f.name)
        meta = f.metadata
        kwargs: Dict[str, Any] = {"dest": f.name, "default": None, "help": meta.get("help", "")}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind is dict:
            kwargs.update(action="append", type=key_value, metavar="KEY=VALUE")
            kwargs["help"] += (
                " (KEY=VALUE, VALUE as JSON, quoted for the shell, e.g. "
                + _DICT_EXAMPLE.split(" ", 1)[1]
                + "; repeatable)"
            )
        elif kind in (int, float):
            upper = meta.get("maximum") or (INT_MAXIMUM if kind is int else None)
            kwargs["type"] = number(kind, flag[2:], meta.get("minimum"), meta.get("strict"), upper)
        elif f.name == "device":
            kwargs["type"] = device_name
        elif meta.get("choices") is not None:
            kwargs["choices"] = meta["choices"]
        action = group.add_argument(flag, *_ALIASES.get(f.name, ()), **kwargs)
        if f.default is not dataclasses.MISSING:
            action.config_default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            action.config_default = f.default_factory()


_DICT_EXAMPLE = "--data-options 'subsample={\"orientation\": 10}'"
# options whose value must be a JSON object
_OBJECT_OPTIONS = {"data_options": ("subsample",)}
# a value that was meant as a dict or a list but is not JSON: {..., [..., or name:value
_NOT_JSON = re.compile(r"^\s*[\[{]|^\s*\w+\s*:\s*[-+.\d\[{\"']")


def _check_option(setting: str, key: str, value: Any) -> None:
    """A ValueError in one line, naming the flag, for an option value that was meant as JSON but is not."""
    flag = config_flag(setting)
    if key in _OBJECT_OPTIONS.get(setting, ()) and not isinstance(value, dict):
        raise ValueError(
            f"{flag} {key}={value}: {key} takes a JSON object, e.g. {_DICT_EXAMPLE} (quoted for the shell)"
        )
    if isinstance(value, str) and _NOT_JSON.search(value):
        raise ValueError(
            f"{flag} {key}={value}: the value is not JSON; dicts and lists are written as JSON, e.g. "
            f"{_DICT_EXAMPLE} (quoted for the shell)"
        )


def flag_settings(args) -> Dict[str, Any]:
    """The RunConfig settings given on the command line (dict settings as dicts, their values checked)."""
    given = {}
    for f in dataclasses.fields(RunConfig):
        if f.name in RECORDS:
            continue
        value = getattr(args, f.name)
        if value is not None:
            if setting_kind(f)[0] is dict:
                value = dict(value)
                for key, item in value.items():
                    _check_option(f.name, key, item)
            given[f.name] = value
    return given


def config_from_args(args) -> RunConfig:
    """The run's configuration: the ``--config`` file (if any), then the flags given over it. Of the file,
    only the settings it chose are kept (not the presets of its data set, nor its data record), so a
    ``--dataset`` flag gets that data set's presets and none of the file's."""
    values: Dict[str, Any] = {}
    if args.config:
        values = load_config(args.config).given_settings()
    for key, value in flag_settings(args).items():
        values[key] = {**values.get(key, {}), **value} if isinstance(value, dict) and key in values else value
    return RunConfig.from_dict(values)


def one_line(error: BaseException) -> str:
    """One line for an error: the message, or for an OSError its description and file."""
    if isinstance(error, OSError) and error.strerror:
        where = f": {error.filename}" if error.filename else ""
        return f"{error.strerror}{where}"
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
