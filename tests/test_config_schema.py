"""The config schema is the one declaration of every key; the front end parses every entry point
alike."""

import inspect
import os
import subprocess
import sys

import pytest

from tripletclip_jax import configlib, demo
from tripletclip_jax.configlib import ConfigError
from tripletclip_jax.data import pipeline
from tripletclip_jax.train import config as schema
from tripletclip_jax.train import step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAGS = {
  schema.DRIVING,
  schema.NEUTRAL,
  schema.RECORDED,
  schema.SCHEDULE,
  schema.MODEL,
  schema.REFUSED,
}

# Library defaults that differ from the trainer's on purpose: a library call spawns no worker
# processes, and the trainer decides uint8 transfer by backend (None), which the data layer cannot
# see.
LIBRARY_DEFAULTS = {"num_workers", "uint8_images"}
# Parameters that share a key's name but not its meaning: make_dataset's `train` says training or
# evaluation order, config.data.train is the training shards' path.
HOMONYMS = {"train"}


def test_every_key_is_declared_once_with_help_and_a_resume_tag():
  keys = schema.schema_keys()
  # `evals` is one key whose value is a dict of evaluators, `data.source` one whose value is a data
  # source's options (both empty by default: no leaves); a source's options are declared with it.
  source = {k for k in keys if k.startswith("data.source.")}
  assert (
    set(keys) - set(configlib.flat_keys(schema.base_config())) == {"evals", "data.source"} | source
  )
  demo_keys = {f"data.source.{k}" for k in configlib.flat_keys(schema.source_config("demo"))}
  assert demo_keys == source - {
    "data.source.world"
  }  # the world's fields: demo/world.py WorldConfig
  for name, k in keys.items():
    assert k.help and k.resume in TAGS, name
  listing = schema.describe().splitlines()
  assert len(listing) == len(keys) and all(" [" in line for line in listing)


def test_function_defaults_agree_with_the_schema():
  # A function that receives a config value as a keyword must not default it to something else.
  declared = schema.schema_keys()
  checked = 0
  for fn, group in (
    (pipeline.make_dataset, "data"),
    (step.create_train_state, "mesh"),
    (step.abstract_train_state, "mesh"),
    (step.make_train_step, "mesh"),
    (step.make_train_step, ""),
    (demo.prepare, "data.source"),
  ):
    for name, p in inspect.signature(fn).parameters.items():
      key = f"{group}.{name}" if group else name
      if key in declared and p.default is not inspect.Parameter.empty:
        if name in LIBRARY_DEFAULTS | HOMONYMS:
          continue
        want = declared[key].default
        got = list(p.default) if isinstance(p.default, tuple) else p.default
        got = {} if got is None and want == {} else got  # None: Python's way to default to a dict
        assert got == (list(want) if isinstance(want, tuple) else want), (fn.__name__, key)
        checked += 1
  assert checked >= 8
  # The optimizer takes its group, so it has no defaults of its own to drift.
  from tripletclip_jax.train.optim import make_optimizer

  assert [p.default for p in inspect.signature(make_optimizer).parameters.values()] == [
    inspect.Parameter.empty
  ] * 2
  with pytest.raises(KeyError, match="weight_dacay"):
    schema.optimizer_config(weight_dacay=0.1)


def test_resume_tags_say_what_a_change_does():
  assert schema.resume_tag("optimizer.learning_rate") == schema.RECORDED
  assert schema.resume_tag("data.partners") == schema.REFUSED
  assert schema.resume_tag("progress_bar") == schema.DRIVING
  assert schema.resume_tag("evals.sugarcrepe.every_steps") == schema.NEUTRAL  # inside a dict value
  # A data source's options carry their own tags; inside a dict value, the nearest declared
  # parent's.
  assert schema.resume_tag("data.source.num_eval") == schema.NEUTRAL
  assert schema.resume_tag("data.source.world.zipf") == schema.REFUSED
  assert schema.resume_tag("my_added_key") == schema.RECORDED  # a key a config file added
  assert "log_every_steps" in schema.keys_tagged(schema.DRIVING)


def test_one_front_end_parses_every_syntax(tmp_path):
  argv = [
    "--config",
    f"{ROOT}/configs/demo.py:clip",
    "--config.batch_size=16",
    "--config.optimizer.learning_rate",
    "1e-3",
    "--set",
    "model.patch_size=8",
    "--workdir",
    "w",
  ]
  config, rest = configlib.parse_command_line(argv)
  assert rest == ["--workdir", "w"] and config.loss == "clip" and config.batch_size == 16
  assert config.optimizer.learning_rate == 1e-3 and config.model.patch_size == 8
  config, _ = configlib.parse_command_line(["--config.seed=3"], default=f"{ROOT}/configs/demo.py")
  assert config.seed == 3
  for argv, msg in (
    ([], "No config file"),
    (["--config"], "--config: give a config file"),
    ([f"--config={ROOT}/configs/demo.py", "--config.optimizer.lr=1"], "did you mean"),
    ([f"--config={ROOT}/configs/demo.py", "--set", "seed=x"], "give an integer"),
  ):
    with pytest.raises(ConfigError, match=msg):
      configlib.parse_command_line(argv)


def test_main_lists_every_key_and_refuses_a_typo_in_one_line():
  run = lambda *a: subprocess.run(  # noqa: E731
    [sys.executable, "launch/main.py", *a], capture_output=True, text=True, cwd=ROOT, timeout=120
  )
  p = run("--help_config", "--config=configs/cc3m.py:clip")
  assert p.returncode == 0 and "loss = 'clip'  [schedule]" in p.stdout
  assert len(p.stdout.splitlines()) == len(schema.schema_keys())
  p = run("--config", "configs/demo.py", "--workdir", "w", "--config.optimizer.weight_dacay=1")
  (line,) = p.stderr.strip().splitlines()
  assert p.returncode == 2 and line.startswith(
    "error: Unknown config key 'optimizer.weight_dacay'; did you mean optimizer.weight_decay"
  )


def test_every_config_flag_in_the_docs_is_a_key_and_its_value_parses():
  """Each `--config.KEY=VALUE` in README.md and docs/ names a key of the trainer's configs or an
  option of an evaluation task (as launch/eval.py takes it), and a concrete VALUE parses as the
  key's type."""
  import glob
  import re

  from tripletclip_jax import evaluate

  docs = [os.path.join(ROOT, "README.md"), *glob.glob(f"{ROOT}/docs/**/*.md", recursive=True)]
  flags = {
    (os.path.relpath(path, ROOT), *m.groups())
    for path in docs
    for m in re.finditer(r"--config\.([\w.]+)=([^\s`)\"'|]*)", open(path).read())
  }
  assert len(flags) > 30
  configs = {name: f"{ROOT}/configs/{name}.py" for name in ("demo", "cc3m")}
  for path, key, value in sorted(flags):
    where = f"{path}: --config.{key}={value}"
    if "KEY" in key or key.startswith("evals.mybench."):  # docs/extending.md's new key, its example
      continue
    task, _, option = key.removeprefix("evals.").partition(".")
    if (
      key.startswith("evals.")
      and task in evaluate.REGISTRY
      and option in evaluate.option_types(task)
    ):
      continue
    known = [
      f for f in configs.values() if key in configlib.flat_keys(configlib.load_config_file(f))
    ]
    assert known, f"{where}: not a key of {sorted(configs)}"
    # A value, not a placeholder such as N or ...
    if not re.fullmatch(r"[A-Z_:]+|.*\.\.\.|", value):
      try:
        configlib.apply_overrides(configlib.load_config_file(known[0]), [f"{key}={value}"])
      except ConfigError as e:
        pytest.fail(f"{where}: {e}")
