"""The trainer's config schema, declared once: every key's default, type, one-line help and what
changing it on resume does. Every training config starts from `base_config()`, built from `SCHEMA`;
`python launch/main.py --help_config` lists it.

What a changed key does when a workdir resumes (`train/resume.py` applies it):
- DRIVING: how the run is driven or logged, never what it trains or how it is scored: resumes
  silently, and `launch/reproduce.py` ignores it when it compares a finished run's settings;
- NEUTRAL: shapes only a run's start or its evaluation (initial weights, evaluators): resumes
  silently;
- RECORDED: changes training from the resumed step on: resumes, says so in one line, and is written
  to the checkpoint meta's `resume_changes`;
- SCHEDULE / MODEL: refused in one line unless `allow_schedule_change` / `allow_model_change`, then
  recorded;
- REFUSED: the saved state or data position would mean something else: always refused in one line.
"""

import importlib.util
import math

import ml_collections
from ml_collections import config_dict

from tripletclip_jax import demo, losses
from tripletclip_jax.configlib import (  # noqa: F401 - the tags are this module's vocabulary too
  DRIVING,
  MODEL,
  NEUTRAL,
  RECORDED,
  REFUSED,
  SCHEDULE,
  ConfigError,
  Key,
  config_value,
  flat_items,
)
from tripletclip_jax.data.pipeline import AUGMENTATIONS, PARTNERS
from tripletclip_jax.models.flops import train_flops_per_example
from tripletclip_jax.models.config import CLIPConfig
from tripletclip_jax.train.metrics import WRITERS
from tripletclip_jax.train.optim import DECAY_RULES


def _group(**keys) -> dict:
  return keys


SCHEMA = _group(
  loss=Key(
    "tripletclip",
    "a name in tripletclip_jax/losses REGISTRY (clip, negclip, tripletclip, siglip ...)",
    SCHEDULE,
  ),
  batch_size=Key(1024, "global positive pairs per step", SCHEDULE),
  total_steps=Key(90_000, "training steps (before compute matching)", SCHEDULE),
  total_examples=Key(None, "alternative to total_steps: positive pairs seen", SCHEDULE, int),
  compute_matched=Key(
    False, "scale steps so every loss spends tripletclip's budget (compute_rule)", SCHEDULE
  ),
  compute_rule=Key(
    "pairs",
    'the budget matched: image-text pairs encoded ("pairs") or training FLOPs ("flops")',
    SCHEDULE,
  ),
  # Initial values of the loss's own parameters, outside the towers: unset ones start at the loss's
  # registry value (logit_scale ln(1/0.07) for the softmax losses; ln 10 and -10 for SigLIP's scale
  # and bias).
  loss_init={
    name: Key(
      None, f"initial {name} of the losses that own it (unset: the registry's)", NEUTRAL, float
    )
    for loss in losses.REGISTRY.values()
    for name in loss.param_names
  },
  clamp_logit_scale=Key(
    True, "clip the log temperature to [0, ln 100] after each update (open_clip)"
  ),
  seed=Key(0, "parameter initialisation and data order"),
  log_every_steps=Key(100, "steps between metric records", DRIVING),
  checkpoint_every_steps=Key(1000, "steps between checkpoints", DRIVING),
  eval_every_steps=Key(5000, "steps between evaluations (evaluators may set their own)", NEUTRAL),
  keep_checkpoints=Key(3, "checkpoints kept in the workdir", DRIVING),
  checkpoint_ocdbt=Key(
    True,
    "Orbax's OCDBT format; False: a zarr array per leaf, for storage without object generations",
    DRIVING,
  ),
  allow_schedule_change=Key(
    False, "resume even though total_steps, batch_size or loss changed", DRIVING
  ),
  allow_model_change=Key(False, "resume even though the network's definition changed", DRIVING),
  preempted_exit_code=Key(
    0, "exit status after SIGTERM saved a checkpoint; non-zero for restart-on-failure", DRIVING
  ),
  stop_after_steps=Key(None, "checkpoint and stop after this many steps of this run", DRIVING, int),
  init_from=Key(
    None, '"hf:PATH": start from a Hugging Face CLIP directory (ignored on resume)', NEUTRAL, str
  ),
  accum_steps=Key(1, "micro-batches per step (gradient accumulation)"),
  model=_group(
    preset=Key(
      "vit_b32", "a preset of tripletclip_jax/models (vit_b32, vit_b16, vit_l14, tiny, demo)", MODEL
    ),
    dtype=Key("bfloat16", "compute dtype: float32 or bfloat16 (parameters stay float32)"),
    remat=Key(False, "rematerialise each block in the backward pass (less memory, more compute)"),
    act=Key("quick_gelu", "quick_gelu (OpenAI weights) or gelu", MODEL),
    attention_impl=Key(
      None, "jax.nn.dot_product_attention's implementation (None: XLA's choice)", RECORDED, str
    ),
    patch_size=Key(None, "ablate the preset's patch size (None: the preset's)", MODEL, int),
    layers=Key(
      None, "ablate both towers' depth, in residual blocks (None: the preset's)", MODEL, int
    ),
  ),
  optimizer=_group(
    learning_rate=Key(5e-4, "peak learning rate (AdamW)"),
    warmup_steps=Key(1000, "linear warmup steps, then cosine to 0"),
    b1=Key(0.9, "AdamW beta1"),
    b2=Key(0.999, "AdamW beta2"),
    eps=Key(1e-8, "AdamW epsilon"),
    weight_decay=Key(0.5, "decoupled weight decay"),
    grad_clip_norm=Key(
      None, "clip the global gradient norm to this (None: no clipping)", RECORDED, float
    ),
    decay_rule=Key(
      "open_clip", 'which parameters decay: "open_clip" (ndim >= 2) or "all" (the release)'
    ),
    # Parameter groups by path regex (re.fullmatch on names like
    # "visual/transformer/resblocks_0/attn/q_proj/kernel").
    no_decay=Key(None, "also exempt these parameters from weight decay (regex)", RECORDED, str),
    frozen=Key(
      None, "no update, no optimizer state, no backward pass through these (regex)", RECORDED, str
    ),
    lr_multipliers=Key((), "((regex, factor), ...): the first match scales the learning rate"),
  ),
  mesh=_group(
    data=Key(-1, "devices on the data axis (-1: the rest)", NEUTRAL),
    fsdp=Key(
      1,
      "devices on the fsdp axis: large weights and their optimizer state are split over it",
      NEUTRAL,
    ),
    min_fsdp_size=Key(2**16, "weights smaller than this stay replicated", NEUTRAL),
    grad_reduce_dtype=Key(
      "float32", "dtype gradients are summed over devices in (bfloat16 halves the bytes)"
    ),
  ),
  data=_group(
    train=Key(
      None, "shard glob / directory of TripletData (TFRecord or ArrayRecord)", RECORDED, str
    ),
    num_workers=Key(8, "Grain worker processes", RECORDED),
    read_threads=Key(4, "threads reading records per process", DRIVING),
    max_bad_fraction=Key(
      0.01, "stop when more than this fraction of a window's records is bad", NEUTRAL
    ),
    bad_window=Key(1000, "records per window of max_bad_fraction", NEUTRAL),
    augment=Key(
      "random_resized_crop",
      'training transform: "random_resized_crop" or "center_crop" (the release)',
    ),
    crop_scale=Key((0.9, 1.0), "random_resized_crop's area range"),
    # A source that writes the training data before build, and names its evaluators: {type,
    # ...options} (SOURCES; the demo world's options are demo.OPTIONS). data.train, when set, is
    # read instead.
    source=Key({}, "a data source prepared before build: {type, ...options} (SOURCES)", REFUSED),
    # A control (data/sources.py): every record carries another record's (x', y').
    partners=Key(
      "paired",
      '"paired", or "shuffled": every record carries another record\'s (x\', y\')',
      REFUSED,
    ),
    # Either way the stream is the same records in the same order, and its saved position counts
    # records.
    in_memory=Key(
      False, "decode the training set once into memory (needs augment=center_crop)", NEUTRAL
    ),
    uint8_images=Key(
      None,
      "images cross to the device as uint8 (None: on for TPU and GPU, off on CPU)",
      NEUTRAL,
      bool,
    ),
  ),
  # Named evaluators, big_vision style: {name: {type, every_steps, ...options}}; the types and their
  # options are tripletclip_jax/evaluate REGISTRY. Entries with an unset path are skipped.
  evals=Key({}, "named evaluators: {name: {type, every_steps, ...}}", NEUTRAL),
  export_hf_dir=Key(
    None,
    'export a transformers CLIP directory at the end, relative to the workdir ("" = off)',
    DRIVING,
    str,
  ),
  distributed=_group(
    coordinator_address=Key(
      None, "jax.distributed coordinator host:port (multi-process runs)", DRIVING, str
    ),
    num_processes=Key(None, "processes of a multi-process run", DRIVING, int),
    process_id=Key(None, "this process's index", DRIVING, int),
  ),
  compilation_cache_dir=Key(
    None,
    "JAX's persistent compilation cache: a restart loads the compiled step (None: WORKDIR/jax_cache"
    ' unless JAX_COMPILATION_CACHE_DIR is set; a gs:// path works; "" = off)',
    DRIVING,
    str,
  ),
  peak_tflops_per_chip=Key(None, "for MFU; measured with a matmul when unset", DRIVING, float),
  progress_bar=Key(True, "a tqdm bar on a terminal", DRIVING),
  writers=Key(
    "tensorboard", 'metric writers besides metrics.jsonl: "tensorboard", "wandb" or both', DRIVING
  ),
  wandb=_group(
    project=Key("tripletclip", "W&B project", DRIVING),
    entity=Key(None, "W&B entity", DRIVING, str),
    name=Key(None, "W&B run name", DRIVING, str),
  ),
  profile_steps=Key(
    None, "(first, last) steps to trace with jax.profiler into WORKDIR/profile", DRIVING, tuple
  ),
)


def _schema_items(schema=None, prefix: str = ""):
  """('a.b', Key) for every key of the schema."""
  for name, v in (SCHEMA if schema is None else schema).items():
    if isinstance(v, dict):
      yield from _schema_items(v, f"{prefix}{name}.")
    else:
      yield f"{prefix}{name}", v


# The data sources `data.source` may name: type -> the module that declares its OPTIONS (Keys),
# `check_options` and `prepare_source`.
SOURCES = {"demo": demo}


def schema_keys() -> dict[str, Key]:
  """{'a.b': Key} for every declared key, the data sources' options under data.source included."""
  keys = dict(_schema_items())
  keys["data.source.type"] = Key(None, f"the data source: {', '.join(SOURCES)}", REFUSED, str)
  for source in SOURCES.values():
    keys.update(_schema_items(source.OPTIONS, "data.source."))
  return keys


def source_config(type: str, **options) -> ml_collections.ConfigDict:  # noqa: A002 - the key's name
  """A `data.source` value: `type`, and every option of that source at its default or in `options`
  (so that each option is typed for `--config.data.source.KEY=VALUE`)."""
  c = _build(SOURCES[type].OPTIONS)
  c.type = type
  c.update(options)
  return c


def resume_tag(key: str) -> str:
  """What changing `key` does on resume; keys a config file added (or inside a dict value such as
  `evals`) take their nearest declared parent's tag, and RECORDED if none."""
  keys = schema_keys()
  while key:
    if key in keys:
      return keys[key].resume
    key = key.rpartition(".")[0]
  return RECORDED


def keys_tagged(*tags: str) -> tuple[str, ...]:
  """The declared keys whose resume tag is one of `tags`."""
  return tuple(k for k, v in schema_keys().items() if v.resume in tags)


def _build(schema: dict) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  for name, v in schema.items():
    if isinstance(v, dict):
      c[name] = _build(v)
    elif v.default is None:
      c[name] = config_dict.placeholder(v.kind)
    elif isinstance(v.default, dict):
      c[name] = ml_collections.ConfigDict(v.default)
    else:
      c[name] = v.default
  return c


def base_config() -> ml_collections.ConfigDict:
  """Every key at its declared default (unlocked: a config file sets its values, then locks it)."""
  return _build(SCHEMA)


def optimizer_config(**changes) -> ml_collections.ConfigDict:
  """The optimizer group at its declared defaults, with `changes`: what `make_optimizer` takes."""
  o = _build(SCHEMA["optimizer"]).lock()  # a misspelt key is an error, not a new key
  o.update(changes)
  return o


def describe(config=None) -> str:
  """One line per key: name, value (the config's, or the default), resume tag and help."""
  config = config if config is not None else base_config()
  values = dict(flat_items(config))
  lines = []
  for key, k in schema_keys().items():
    value = values.get(key, k.default)
    lines.append(f"{key} = {value!r}  [{k.resume}]  {k.help}")
  return "\n".join(lines)


COMPUTE_RULES = ("pairs", "flops")


def validate(config) -> None:
  """Checks the values a typo or a slip makes impossible, before anything is built; raises
  ConfigError."""

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
  source = config.data.source
  if source:
    need(source.get("type") in SOURCES, "data.source.type", f"choose one of {', '.join(SOURCES)}")
    options = SOURCES[source.type].OPTIONS
    unknown = sorted(set(source) - {"type"} - set(options))
    if unknown:
      raise ConfigError(
        f"config.data.source.{unknown[0]}: not an option of the {source.type} source; its options "
        f"are {', '.join(options)}."
      )
    SOURCES[source.type].check_options(source)
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


def resolve_total_steps(config, loss: losses.Loss, model_config: CLIPConfig | None = None) -> int:
  """Steps from total_steps or total_examples; under compute_matched, scaled to tripletclip's
  budget.

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
