"""The trainer's config schema: every training config starts from `base_config()`.

Top-level keys common to every run: total_steps, batch_size (positive pairs,
global), loss, seed, log_every_steps, checkpoint_every_steps, eval_every_steps.
"""

import ast
import importlib.util
import json
import math
import os

import ml_collections
from ml_collections import config_dict

from tripletclip_jax import losses
from tripletclip_jax.data.pipeline import AUGMENTATIONS, PARTNERS
from tripletclip_jax.models.flops import train_flops_per_example
from tripletclip_jax.models.config import CLIPConfig
from tripletclip_jax.train.metrics import WRITERS
from tripletclip_jax.train.optim import DECAY_RULES


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.loss = "tripletclip"  # a name in tripletclip_jax/losses REGISTRY (clip, negclip, tripletclip, siglip ...)
  c.batch_size = 1024  # global positive pairs per step
  c.total_steps = 90_000
  c.total_examples = config_dict.placeholder(int)  # alternative to total_steps: positive pairs seen
  c.compute_matched = False  # scale steps so every loss spends tripletclip's budget ...
  # ... of image-text pairs encoded ("pairs") or of training FLOPs ("flops")
  c.compute_rule = "pairs"
  # Initial values of the loss's own parameters, outside the towers: unset ones start at the loss's registry
  # value (logit_scale ln(1/0.07) for the softmax losses; ln 10 and -10 for SigLIP's scale and bias).
  c.loss_init = ml_collections.ConfigDict(
    {
      name: config_dict.placeholder(float)
      for loss in losses.REGISTRY.values()
      for name in loss.param_names
    }
  )
  # clip the log temperature to [0, ln 100] after each update (open_clip)
  c.clamp_logit_scale = True
  c.seed = 0
  c.log_every_steps = 100
  c.checkpoint_every_steps = 1000
  c.eval_every_steps = 5000
  c.keep_checkpoints = 3
  # Orbax's OCDBT format (one database per checkpoint; the default). False: one zarr array per leaf,
  # for storage that cannot serve OCDBT's conditional reads (object generations).
  c.checkpoint_ocdbt = True
  c.allow_schedule_change = False
  c.allow_model_change = False  # resume even though the network's definition changed
  # exit status after SIGTERM saved a checkpoint; non-zero for restart-on-failure
  c.preempted_exit_code = 0
  c.stop_after_steps = config_dict.placeholder(
    int
  )  # checkpoint and stop after this many steps of this run
  c.init_from = config_dict.placeholder(str)  # "hf:PATH" starts from a Hugging Face CLIP
  c.accum_steps = 1

  c.model = ml_collections.ConfigDict(
    dict(
      preset="vit_b32",
      dtype="bfloat16",
      remat=False,
      act="quick_gelu",
      attention_impl=config_dict.placeholder(str),
      patch_size=config_dict.placeholder(int),  # None: the preset's
    )
  )
  c.optimizer = ml_collections.ConfigDict(
    dict(
      learning_rate=5e-4,
      warmup_steps=1000,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      weight_decay=0.5,
      grad_clip_norm=config_dict.placeholder(float),
      decay_rule="open_clip",  # or "all": train/optim.py DECAY_RULES
      # Parameter groups by path regex (re.fullmatch on names like "visual/transformer/resblocks_0/attn/q_proj/kernel"):
      no_decay=config_dict.placeholder(str),  # also exempt these from weight decay
      frozen=config_dict.placeholder(
        str
      ),  # no update, no optimizer state, no backward pass through them
      lr_multipliers=(),  # ((regex, factor), ...): first match scales the learning rate
    )
  )
  # grad_reduce_dtype: the dtype gradients are summed over devices in ("bfloat16" halves those bytes; open_clip
  # sums float32, as the default here does).
  c.mesh = ml_collections.ConfigDict(
    dict(data=-1, fsdp=1, min_fsdp_size=2**16, grad_reduce_dtype="float32")
  )
  c.data = ml_collections.ConfigDict(
    dict(
      train=config_dict.placeholder(str),  # shard glob / directory of TripletData
      num_workers=8,
      read_threads=4,
      max_bad_fraction=0.01,
      bad_window=1000,
      augment="random_resized_crop",
      crop_scale=(0.9, 1.0),  # augment "center_crop": the release's transform
      demo_data_dir=config_dict.placeholder(
        str
      ),  # demo: where to generate the world (default WORKDIR/data)
      demo_num_train=0,
      demo_num_eval=0,
      demo_num_base=0,  # single-object scenes for a CLIP base (launch/reproduce.py trains it)
      demo_train_set="train",  # which of the world's sets to train on: "train" or "base"
      demo_world_seed=config_dict.placeholder(int),  # None: the run's seed draws the world too
      # "shuffled": every record carries another record's (x', y'), a control (data/sources.py).
      partners="paired",
      # Decode the training set once into memory (needs augment="center_crop"); same batches, no decode
      # per step. For sets that fit in RAM, such as the demo world.
      in_memory=False,
      # Images cross to the device as uint8 and are normalised there (a quarter of the bytes of float32).
      # None: on for TPU and GPU, off on CPU, where there is no transfer to save.
      uint8_images=config_dict.placeholder(bool),
    )
  )
  # Named evaluators, big_vision style: {name: {type, every_steps (default eval_every_steps), ...options}}; the
  # types and their options are tripletclip_jax/evaluate REGISTRY. Entries with an unset path are skipped.
  # Empty on the demo world: its own benchmarks.
  c.evals = ml_collections.ConfigDict()
  c.export_hf_dir = config_dict.placeholder(
    str
  )  # export a transformers CLIP directory at the end ("" = off)
  c.distributed = ml_collections.ConfigDict(
    dict(
      coordinator_address=config_dict.placeholder(str),
      num_processes=config_dict.placeholder(int),
      process_id=config_dict.placeholder(int),
    )
  )
  c.peak_tflops_per_chip = config_dict.placeholder(
    float
  )  # for MFU; measured with a matmul when unset
  c.progress_bar = True
  # Where metrics go besides metrics.jsonl and stdout: "tensorboard", "wandb", or both ("tensorboard,wandb").
  # W&B needs `pip install -e '.[wandb]'`; a resumed run continues the same W&B run.
  c.writers = "tensorboard"
  c.wandb = ml_collections.ConfigDict(
    dict(
      project="tripletclip", entity=config_dict.placeholder(str), name=config_dict.placeholder(str)
    )
  )
  # (first, last) step to trace with jax.profiler into WORKDIR/profile (TensorBoard's profile plugin,
  # Perfetto); e.g. --config.profile_steps='(10, 15)'. Process 0 only.
  c.profile_steps = config_dict.placeholder(tuple)
  return c


COMPUTE_RULES = ("pairs", "flops")


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key and what to do."""


def validate(config) -> None:
  """Checks the values a typo or a slip makes impossible, before anything is built; raises ConfigError."""

  def need(ok, key, what):
    if not ok:
      raise ConfigError(f"config.{key}={config_value(config, key)!r}: {what}.")

  need(config.loss in losses.REGISTRY, "loss", f"choose one of {', '.join(losses.REGISTRY)}")
  need(config.batch_size > 0, "batch_size", "must be a positive number of pairs per step")
  if config.total_examples is None:
    need(config.total_steps > 0, "total_steps", "must be positive (or set total_examples)")
  else:
    need(config.total_examples > 0, "total_examples", "must be positive")
  need(config.accum_steps >= 1, "accum_steps", "must be >= 1 (1 means no accumulation)")
  for key in ("log_every_steps", "checkpoint_every_steps", "eval_every_steps", "keep_checkpoints"):
    need(config[key] >= 1, key, "must be >= 1")
  need(config.compute_rule in COMPUTE_RULES, "compute_rule", f"choose one of {COMPUTE_RULES}")
  need(
    set(writers(config)) <= set(WRITERS),
    "writers",
    f"a comma-separated list of {', '.join(WRITERS)}",
  )
  need(
    "wandb" not in writers(config) or importlib.util.find_spec("wandb") is not None,
    "writers",
    "the wandb package is not installed: pip install -e '.[wandb]'",
  )
  need(config.model.dtype in ("float32", "bfloat16"), "model.dtype", "choose float32 or bfloat16")
  need(
    config.mesh.grad_reduce_dtype in ("float32", "bfloat16"),
    "mesh.grad_reduce_dtype",
    "choose float32 or bfloat16",
  )
  need(
    config.optimizer.decay_rule in DECAY_RULES,
    "optimizer.decay_rule",
    f"choose one of {DECAY_RULES}",
  )
  need(config.data.augment in AUGMENTATIONS, "data.augment", f"choose one of {AUGMENTATIONS}")
  need(config.data.partners in PARTNERS, "data.partners", f"choose one of {PARTNERS}")
  need(
    config.data.demo_train_set in ("train", "base")
    and (config.data.demo_train_set == "train" or config.data.demo_num_base > 0),
    "data.demo_train_set",
    'choose "train", or "base" with data.demo_num_base > 0',
  )
  need(
    not (config.data.in_memory and config.data.augment != "center_crop"),
    "data.in_memory",
    "a decoded-once set cannot draw a new random crop each epoch; set data.augment=center_crop",
  )
  need(
    not (config.data.in_memory and config.data.num_workers),
    "data.in_memory",
    "the decoded set is served from this process; set data.num_workers=0",
  )
  prof = config.get("profile_steps")
  need(
    prof is None
    or (len(prof) == 2 and all(isinstance(x, int) for x in prof) and 0 <= prof[0] < prof[1]),
    "profile_steps",
    "give (first, last) steps with 0 <= first < last, e.g. (10, 15)",
  )
  scale = tuple(config.data.crop_scale)
  need(
    len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1,
    "data.crop_scale",
    "give a pair (lo, hi) with 0 < lo <= hi <= 1, e.g. (0.9, 1.0)",
  )


def writers(config) -> tuple[str, ...]:
  """The metric writers `config.writers` names (a comma-separated string)."""
  return tuple(w.strip() for w in config.get("writers", "tensorboard").split(",") if w.strip())


def config_value(config, key: str):
  node = config
  for k in key.split("."):
    node = node[k]
  return node


def resolve_total_steps(config, loss: losses.Loss, model_config: CLIPConfig | None = None) -> int:
  """Steps from total_steps or total_examples; under compute_matched, scaled to tripletclip's budget.

  compute_rule "pairs" equalises image-text pairs encoded; "flops" equalises training FLOPs
  (needs `model_config`, since images and texts cost differently). `loss` is the run's `Loss`.
  """
  steps = (
    math.ceil(config.total_examples / config.batch_size)
    if config.total_examples
    else config.total_steps
  )
  reference = losses.get("tripletclip")  # the budget every loss is matched to
  if config.compute_matched:
    if config.compute_rule == "pairs":
      steps = round(steps * reference.pairs_per_example / loss.pairs_per_example)
    elif config.compute_rule == "flops":
      steps = round(
        steps
        * train_flops_per_example(model_config, reference)
        / train_flops_per_example(model_config, loss)
      )
    else:
      raise ValueError(
        f"Unknown compute_rule {config.compute_rule!r}; choose one of {COMPUTE_RULES}."
      )
  return int(steps)


def load_config_file(spec: str, arg: str | None = None):
  """`get_config()` of a config file, given as "PATH[:ARG]" (ml_collections' --config syntax) or PATH and `arg`.

  Raises ConfigError in one line for a missing file, a syntax or import error, a missing `get_config`,
  a bad ARG, or a `get_config` that returns no ConfigDict.
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
  """`get_config(arg)` of config file `name` beside `this_file`, unlocked: how one config builds on another
  without putting configs/ on sys.path."""
  return load_config_file(
    os.path.join(os.path.dirname(os.path.abspath(this_file)), name), arg
  ).unlock()


def parse_arg(arg: str | None, **defaults) -> dict:
  """A config file's ':ARG' as comma-separated key=value pairs (big_vision style); a bare first word sets
  the first key. Unknown keys raise ValueError naming the choices."""
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


def config_changes(saved: dict, now: dict, ignore: tuple[str, ...] = ()) -> list[str]:
  """'key saved -> now' for every leaf that differs between two config dicts, except the keys in `ignore`
  (and those below them). Tuples and lists compare equal, as JSON stores both as lists."""

  def norm(v):
    return json.loads(json.dumps(v))

  a, b = dict(flat_items(saved)), dict(flat_items(now))
  ignored = lambda k: any(k == n or k.startswith(n + ".") for n in ignore)  # noqa: E731
  return [
    f"{k} {a.get(k)} -> {b.get(k)}"
    for k in sorted(set(a) | set(b))
    if not ignored(k) and norm(a.get(k)) != norm(b.get(k))
  ]


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
  """`key.sub=value` strings onto a locked ConfigDict, each value typed as the config declares the key: the
  `--config.key=value` flags of every entry point (launch/main.py parses them through absl the same way).

  An unknown key or a value of the wrong type raises ConfigError in one line, naming the key (and the
  nearest known keys).
  """
  import difflib

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
    if issubclass(
      kind, (ml_collections.ConfigDict, dict)
    ):  # a whole group, as a dict literal (e.g. evals={})
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
  """(the rest of argv, the `--config.key=value` / `--config.key value` overrides as 'key=value')."""
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
