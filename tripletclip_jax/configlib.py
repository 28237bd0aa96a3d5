"""The one config front end: config files, typed `--config.KEY=VALUE` overrides, and config diffs.

Every entry point (launch/main.py, eval.py, reproduce.py, benchmarks/tpu_plan.py) reads its config
through `parse_command_line` or the functions below, so the syntax and the errors are the same
everywhere:

    config, rest = configlib.parse_command_line(sys.argv[1:])
    # --config=configs/demo.py[:ARG]  or  --config configs/demo.py
    # --config.optimizer.learning_rate=1e-3  or  --config.optimizer.learning_rate 1e-3  or  --set KEY=VALUE

An unknown key, a value of the wrong type, a missing or broken config file: one line (ConfigError)
that names the key or file and says what to do, with the nearest known keys for a typo. This module
imports nothing of the package, so any layer may use it.
"""

import ast
import dataclasses
import difflib
import importlib.util
import json
import os
from typing import Any

import ml_collections

# What changing a key does when a workdir resumes (train/config.py says what each means).
DRIVING, NEUTRAL, RECORDED = "driving", "neutral", "recorded"
SCHEDULE, MODEL, REFUSED = "schedule", "model", "refused"


@dataclasses.dataclass(frozen=True)
class Key:
  """One config key: its default (None: unset, of `kind`), its help line and its resume tag. The
  trainer's schema (train/config.py) and the options of a data source (demo.OPTIONS) are made of
  them."""

  default: Any
  help: str
  resume: str = RECORDED
  kind: type | None = None


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key and what to do."""


def config_value(config, key: str):
  node = config
  for k in key.split("."):
    node = node[k]
  return node


def load_config_file(spec: str, arg: str | None = None):
  """`get_config()` of a config file, given as "PATH[:ARG]" (ml_collections' --config syntax) or
  PATH and `arg`.

  Raises ConfigError in one line for a missing file, a syntax or import error, a missing
  `get_config`, a bad ARG, or a `get_config` that returns no ConfigDict.
  """
  path, sep, spec_arg = spec.partition(":")
  arg = spec_arg if sep else arg
  if not os.path.isfile(path):
    raise ConfigError(f"Config file {path} does not exist: pass --config=configs/NAME.py[:ARG].")
  module_spec = importlib.util.spec_from_file_location("_tripletclip_config", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except SyntaxError as e:
    raise ConfigError(f"{path}:{e.lineno}: syntax error ({e.msg}): fix the config file.") from None
  except Exception as e:  # noqa: BLE001 - an import error or any failure while the file runs
    raise ConfigError(
      f"{path} failed to load ({type(e).__name__}: {e}): fix the config file."
    ) from None
  if not callable(getattr(module, "get_config", None)):
    raise ConfigError(
      f"{path} defines no get_config(): a config file returns its ConfigDict from get_config()."
    )
  try:
    config = module.get_config(arg) if arg else module.get_config()
  except TypeError as e:
    if arg and "positional argument" in str(e):
      raise ConfigError(f"{path} takes no ':ARG' (got {arg!r}): drop it.") from None
    raise ConfigError(f"{path}: get_config({arg!r}) failed ({type(e).__name__}: {e}).") from None
  except Exception as e:  # noqa: BLE001 - a bad ARG, usually
    raise ConfigError(
      f"{path}: get_config({arg!r}) failed ({type(e).__name__}: {e}): check the ':ARG'."
    ) from None
  if not isinstance(config, (ml_collections.ConfigDict, dict)):
    raise ConfigError(
      f"{path}: get_config() returned {type(config).__name__}, not a ConfigDict: is a 'return' "
      "missing?"
    )
  return config


def sibling_config(this_file: str, name: str, arg: str | None = None):
  """`get_config(arg)` of config file `name` beside `this_file`, unlocked: how one config builds on
  another without putting configs/ on sys.path."""
  return load_config_file(
    os.path.join(os.path.dirname(os.path.abspath(this_file)), name), arg
  ).unlock()


def parse_arg(arg: str | None, **defaults) -> dict:
  """A config file's ':ARG' as comma-separated key=value pairs (big_vision style); a bare first word
  sets the first key. Unknown keys raise ValueError naming the choices."""
  out = dict(defaults)
  for i, item in enumerate(p for p in (arg or "").split(",") if p):
    key, sep, value = item.partition("=")
    if not sep:
      if i:
        raise ValueError(f"config argument {item!r}: use key=value")
      key, value = next(iter(defaults)), item
    if key not in defaults:
      raise ValueError(f"config argument {key!r}: choose from {', '.join(defaults)}")
    out[key] = value
  return out


def flat_items(config, prefix: str = ""):
  """Yields ('a.b.c', value) for every leaf of a ConfigDict or a nested dict."""
  for k, v in config.items():
    if isinstance(v, (ml_collections.ConfigDict, dict)):
      yield from flat_items(v, f"{prefix}{k}.")
    else:
      yield f"{prefix}{k}", v


def flat_keys(config) -> list[str]:
  """Every leaf key of a ConfigDict as 'a.b.c'."""
  return [k for k, _ in flat_items(config)]


def changed_values(saved: dict, now: dict) -> dict:
  """{key: (saved value, now)} for every leaf that differs between two config dicts. Tuples and
  lists compare equal, as JSON stores both as lists; a key missing on one side counts as None
  there."""

  def norm(v):
    return json.loads(json.dumps(v))

  a, b = dict(flat_items(saved)), dict(flat_items(now))
  return {
    k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if norm(a.get(k)) != norm(b.get(k))
  }


def config_changes(saved: dict, now: dict, ignore: tuple[str, ...] = ()) -> list[str]:
  """'key saved -> now' for every leaf that differs between two config dicts, except the keys in
  `ignore` (and those below them)."""
  ignored = lambda k: any(k == n or k.startswith(n + ".") for n in ignore)  # noqa: E731
  return [f"{k} {a} -> {b}" for k, (a, b) in changed_values(saved, now).items() if not ignored(k)]


def _typed(raw: str, kind: type, key: str):
  """`raw` (command-line text) as a value of the type config key `key` declares."""
  if raw == "None":
    return None
  if kind is bool:
    if raw.lower() in ("true", "1", "yes"):
      return True
    if raw.lower() in ("false", "0", "no"):
      return False
    raise ConfigError(f"config.{key}={raw!r}: give true or false.")
  if kind in (int, float):
    try:
      return kind(ast.literal_eval(raw)) if kind is float else int(raw)
    except (ValueError, SyntaxError, TypeError):
      raise ConfigError(
        f"config.{key}={raw!r}: give {'an integer' if kind is int else 'a number'}."
      ) from None
  if kind is str:  # text as it is; a quoted Python string ('' or "x") is unquoted
    quoted = len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\""
    return ast.literal_eval(raw) if quoted else raw
  try:
    value = ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    if kind in (tuple, list):
      raise ConfigError(f"config.{key}={raw!r}: give a Python tuple, e.g. '(1, 2)'.") from None
    return raw  # a key whose value is unset and untyped takes the text
  if kind in (tuple, list) and not isinstance(value, (tuple, list)):
    raise ConfigError(f"config.{key}={raw!r}: give a Python tuple, e.g. '(1, 2)'.")
  return tuple(value) if kind is tuple else value


def apply_overrides(config, overrides: list[str], flag: str = "--config.") -> None:
  """`key.sub=value` strings onto a locked ConfigDict, each value typed as the config declares the
  key: the `--config.key=value` flags of every entry point (launch/main.py parses them through absl
  the same way).

  An unknown key or a value of the wrong type raises ConfigError in one line, naming the key (and
  the nearest known keys).
  """
  for item in overrides:
    key, sep, raw = item.partition("=")
    if not sep:
      raise ConfigError(f"{flag}{item}: use {flag}key=value")
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node.get(p) if isinstance(node, (ml_collections.ConfigDict, dict)) else None
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
      close = difflib.get_close_matches(key, flat_keys(config), n=3, cutoff=0.5)
      raise ConfigError(
        f"Unknown config key '{key}'"
        + (f"; did you mean {', '.join(close)}?" if close else "; see the config file.")
      )
    kind = node.get_type(leaf)
    # A whole group, as a dict literal (e.g. evals={}).
    if issubclass(kind, (ml_collections.ConfigDict, dict)):
      value = _typed(raw, dict, key)
      if not isinstance(value, dict):
        raise ConfigError(
          f"config.{key} is a group of keys: set one of them ({flag}{key}.NAME=...) or give a "
          f"dict, e.g. {flag}{key}={{}}."
        )
    else:
      value = _typed(raw, kind, key)
    try:
      node[leaf] = value
    except (TypeError, ValueError) as e:
      raise ConfigError(f"config.{key}={raw!r}: {str(e).splitlines()[0]}") from None


def split_overrides(argv: list[str], flag: str = "--config.") -> tuple[list[str], list[str]]:
  """(the rest of argv, the `--config.key=value` / `--config.key value` overrides as
  'key=value')."""
  rest, overrides, i = [], [], 0
  while i < len(argv):
    a = argv[i]
    if a.startswith(flag):
      body = a[len(flag) :]
      if "=" not in body:
        if i + 1 >= len(argv):
          raise ConfigError(f"{a}: give a value, {a}=VALUE")
        body, i = f"{body}={argv[i + 1]}", i + 1
      overrides.append(body)
    else:
      rest.append(a)
    i += 1
  return rest, overrides


def split_config_spec(argv: list[str]) -> tuple[list[str], str | None]:
  """(argv without it, the value of `--config=PATH[:ARG]` or `--config PATH`, or None)."""
  rest, spec, i = [], None, 0
  while i < len(argv):
    a = argv[i]
    if a.startswith("--config="):
      spec = a.split("=", 1)[1]
    elif a == "--config":
      if i + 1 >= len(argv):
        raise ConfigError("--config: give a config file, --config=configs/NAME.py[:ARG]")
      spec, i = argv[i + 1], i + 1
    else:
      rest.append(a)
    i += 1
  return rest, spec


def split_set_flags(argv: list[str]) -> tuple[list[str], list[str]]:
  """(argv without them, the values of `--set KEY=VALUE` / `--set=KEY=VALUE`), an alias of
  --config."""
  rest, values, i = [], [], 0
  while i < len(argv):
    a = argv[i]
    if a.startswith("--set="):
      values.append(a.split("=", 1)[1])
    elif a == "--set":
      if i + 1 >= len(argv):
        raise ConfigError("--set: give KEY=VALUE")
      values.append(argv[i + 1])
      i += 1
    else:
      rest.append(a)
    i += 1
  return rest, values


def parse_command_line(argv: list[str], default: str | None = None):
  """(the config, the remaining arguments) from a command line.

  Reads `--config=PATH[:ARG]` (or `--config PATH`; `default` when absent), then applies every
  `--config.KEY=VALUE`, `--config.KEY VALUE` and `--set KEY=VALUE` in the order given, each typed as
  the config declares the key. Raises ConfigError in one line for anything that cannot work.
  """
  argv, spec = split_config_spec(list(argv))
  spec = spec or default
  if not spec:
    raise ConfigError("No config file: pass --config=configs/NAME.py[:ARG].")
  argv, overrides = split_overrides(argv)
  argv, sets = split_set_flags(argv)
  config = load_config_file(spec)
  apply_overrides(config, overrides + sets)
  return config, argv
