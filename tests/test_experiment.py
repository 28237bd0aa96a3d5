"""`build` checks what it builds before any training: each hostile config below is refused in one
line."""

import os
import sys
import time

import jax
import numpy as np
import pytest

from tripletclip_jax import sharding
from tripletclip_jax.configlib import ConfigError, load_config_file
from tripletclip_jax.train.experiment import build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_trainer import data_dir, small_config  # noqa: E402, F401 - the shared demo world


def _refused(config, match, workdir=None):
  with pytest.raises((ConfigError, FileNotFoundError)) as e:
    build(config, workdir)
  msg = str(e.value)
  assert len(msg.splitlines()) == 1 and match in msg, msg


def test_build_refuses_configs_that_cannot_train(data_dir):
  lit = load_config_file(os.path.join(ROOT, "configs", "lit.py"), "world=demo")
  _refused(
    lit,
    "optimizer.frozen='visual/.*' freezes 504,960 parameters that would keep their random "
    "initialisation: set config.init_from=hf:PATH",
  )
  everything = small_config(data_dir, **{"optimizer.frozen": ".*"})
  _refused(everything, "optimizer.frozen='.*' freezes every parameter: nothing would train")
  _refused(
    small_config(data_dir, **{"optimizer.no_decay": "visaul/.*"}),
    "optimizer.no_decay='visaul/.*' matches no parameter; paths look like",
  )
  for factor in (0.0, -1.0):
    _refused(
      small_config(data_dir, **{"optimizer.lr_multipliers": (("text/.*", factor),)}),
      f"optimizer.lr_multipliers[0]=('text/.*', {factor}): a factor must be positive",
    )
  ft = load_config_file(os.path.join(ROOT, "configs", "finetune.py"), "world=demo,tower_lr=-3")
  with ft.unlocked():
    ft.init_from = None  # the multiplier is refused before a checkpoint is needed
  _refused(ft, "optimizer.lr_multipliers[0]=")
  _refused(
    small_config(data_dir, **{"optimizer.learning_rate": -1e-3}),
    "optimizer.learning_rate=-0.001: must be positive",
  )
  with pytest.raises(ConfigError, match=r"world='dmo': the only world is 'demo'"):
    load_config_file(os.path.join(ROOT, "configs", "lit.py"), "world=dmo")


def test_the_depth_is_an_ablation_of_the_preset(data_dir):
  exp = build(small_config(data_dir, **{"model.layers": 3}), abstract=True)
  assert (exp.model_config.vision.layers, exp.model_config.text.layers) == (3, 3)
  assert "resblocks_2" in exp.state.params["text"]["transformer"]
  _refused(small_config(data_dir, **{"model.layers": 0}), "config.model.layers=0: must be positive")


def test_a_regex_that_backtracks_badly_is_answered_at_once(data_dir):
  """`(.*)*x` makes Python's `re` run for hours on a long path (and ignore SIGTERM); RE2 answers at
  once."""
  t = time.perf_counter()
  _refused(
    small_config(data_dir, **{"optimizer.frozen": "(.*)*x"}),
    "optimizer.frozen='(.*)*x' matches no parameter",
  )
  assert time.perf_counter() - t < 30
  _refused(
    small_config(data_dir, **{"optimizer.frozen": "(visual"}),
    "optimizer regex '(visual' is not an RE2 regular expression (missing ): (visual)",
  )


def test_a_missing_eval_path_is_found_before_training(data_dir, tmp_path):
  config = small_config(data_dir)
  with config.unlocked():
    config.evals = {"sugarcrepe": {"type": "sugarcrepe", "sugarcrepe_dir": str(tmp_path / "nope")}}
  _refused(
    config,
    f"evals.sugarcrepe.sugarcrepe_dir='{tmp_path / 'nope'}' does not exist",
    str(tmp_path / "w"),
  )
  assert not os.path.exists(tmp_path / "w" / "checkpoints")


def test_build_reports_parameter_groups_with_counts(data_dir, tmp_path):
  said = []
  config = small_config(
    data_dir,
    **{"optimizer.lr_multipliers": (("text/.*", 0.1),), "optimizer.no_decay": "visual/conv1/.*"},
  )
  exp = build(config, str(tmp_path), log=said.append)
  assert (
    exp.param_groups[0].startswith("base: ")
    and "parameters at the scheduled learning rate" in exp.param_groups[0]
  )
  n_text = sum(x.size for x in jax.tree.leaves(exp.state.params["text"]))
  assert exp.param_groups[1] == f"lr0 'text/.*': {n_text:,} parameters at 0.1 x the rate"
  assert exp.param_groups[2].startswith("weight decay (open_clip, no_decay 'visual/conv1/.*'): on ")
  assert exp.loss.name == "tripletclip" and exp.train_data is not None and len(exp.evaluators) == 3


def test_the_temperature_has_one_owner_and_it_changes_training(data_dir, tmp_path):
  """`config.loss_init.logit_scale` is where a run's temperature starts; the towers hold none."""

  def first_step(name, **init):
    exp = build(
      small_config(data_dir, **{f"loss_init.{k}": v for k, v in init.items()}),
      str(tmp_path / name),
      devices=jax.devices()[:2],
    )
    batch = {k: v for k, v in next(exp.train_data).items() if k not in ("key", "bad_counts")}
    start = float(exp.state.params["logit_scale"])
    _, m = exp.train_step(exp.state, sharding.put_batch(batch, exp.mesh))
    return start, float(m["loss"])

  start, loss = first_step("default")
  assert start == pytest.approx(np.log(1 / 0.07))
  start2, loss2 = first_step("warmer", logit_scale=2.0)
  assert start2 == 2.0 and abs(loss2 - loss) > 1e-3
  _refused(
    small_config(data_dir, **{"loss_init.logit_bias": -5.0}),
    "config.loss_init: loss tripletclip has no parameter 'logit_bias'",
  )
