"""Checkpoints: damage (flipped bytes, deleted, truncated or edited files) is found, reported and
skipped; a changed config is refused without touching a checkpoint; a checkpoint loads on any number
of devices."""

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tripletclip_jax import checkpoint
from tripletclip_jax.configlib import ConfigError
from test_trainer import _losses, data_dir, small_config, train  # noqa: F401 - the module-scoped demo data fixture


def _largest_state_file(workdir, step):
  root = os.path.join(workdir, "checkpoints", str(step), "state")
  files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
  return max(files, key=os.path.getsize)


def _flip(path, n=64):
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.seek(size // 2)
    data = bytearray(f.read(n))
    f.seek(size // 2)
    f.write(bytes(b ^ 0xFF for b in data))


def test_checksum_sees_one_flipped_bit_and_a_swap_but_not_the_sharding():
  x = jnp.arange(24, dtype=jnp.float32).reshape(4, 6)
  base = checkpoint.checksums({"w": x, "b": jnp.ones(3, jnp.bfloat16), "step": jnp.int32(5)})
  flipped = x.at[2, 3].set(
    jax.lax.bitcast_convert_type(jax.lax.bitcast_convert_type(x[2, 3], jnp.uint32) ^ 1, jnp.float32)
  )
  swapped = x.at[0, 1].set(x[1, 0]).at[1, 0].set(x[0, 1])
  assert checkpoint.checksums({"w": flipped})["w"] != base["w"]
  assert checkpoint.checksums({"w": swapped})["w"] != base["w"]
  mesh = jax.make_mesh((4,), ("d",))
  sharded = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d")))
  assert checkpoint.checksums({"w": sharded})["w"] == base["w"]
  with pytest.raises(
    checkpoint.DamagedCheckpoint, match=r"checkpoint 7: 1 array\(s\) differ .*\(w\)"
  ):
    checkpoint.verify({"w": flipped}, base, 7)


def test_damaged_newest_checkpoints_fall_back_to_the_intact_one(data_dir, tmp_path, capsys):
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  cfg = dict(total_steps=8, checkpoint_every_steps=2, eval_every_steps=100, log_every_steps=2)
  train(small_config(data_dir, stop_after_steps=6, **cfg), b)  # checkpoints 2, 4 and 6
  # silent before checksums: it resumed with 3.4e38 in the embedding
  _flip(_largest_state_file(b, 6))
  victim = _largest_state_file(b, 4)
  os.truncate(victim, os.path.getsize(victim) // 3)
  capsys.readouterr()
  train(small_config(data_dir, **cfg), b)
  out = capsys.readouterr().out
  # Flipped bytes in compressed data either decode to other values (the checksum) or fail to decode
  # at all.
  assert re.search(
    r"Checkpoint 6 in .* is damaged: (.*differ from their save-time checksum|.*error while reading)",
    out,
  ), out
  assert "falling back to checkpoint 4" in out and "falling back to checkpoint 2" in out
  assert "Resumed from step 2" in out
  assert len(os.listdir(os.path.join(b, "damaged_checkpoints"))) == 2
  train(small_config(data_dir, **cfg), a)  # uninterrupted
  assert _losses(a) == _losses(b) and max(_losses(b)) == 8


def test_export_and_trainer_refuse_when_every_checkpoint_is_damaged(data_dir, tmp_path):
  w = str(tmp_path / "w")
  train(small_config(data_dir, stop_after_steps=4, checkpoint_every_steps=4), w)
  os.remove(_largest_state_file(w, 4))
  # The message names the array and the folder that failed to read (not tensorstore's bound method).
  with pytest.raises(
    checkpoint.DamagedCheckpoint,
    match=r'checkpoint 4 .*Error reading "[^"]+" in OCDBT database at .*checkpoints/4/state/.*--step',
  ) as e:
    checkpoint.load_params(w)
  assert "bound method" not in str(e.value)
  with pytest.raises(checkpoint.DamagedCheckpoint, match="Every checkpoint in .* is damaged"):
    train(small_config(data_dir, checkpoint_every_steps=4), w)


def test_a_changed_setting_is_refused_in_one_line_and_moves_nothing(data_dir, tmp_path, capsys):
  w = str(tmp_path / "w")
  cfg = dict(total_steps=8, checkpoint_every_steps=2, eval_every_steps=100)
  train(small_config(data_dir, stop_after_steps=4, **cfg), w)
  before = sorted(os.listdir(os.path.join(w, "checkpoints")))
  for change, needle in [  # each used to set both intact checkpoints aside as "damaged"
    (
      {"optimizer.grad_clip_norm": 1.0},
      r"changed since it was written: optimizer.grad_clip_norm None -> 1.0",
    ),
    (
      {"optimizer.lr_multipliers": (("text/.*", 0.5),)},
      r"optimizer.lr_multipliers \[\] -> \(\('text/\.\*', 0\.5\),\)",
    ),
    (
      {"model.preset": "tiny", "allow_model_change": True},
      r"visual/conv1/kernel float32\[16, 16, 3, 128\] -> float32\[8, 8, 3, 128\].*model.preset demo -> tiny",
    ),
    (
      {"loss": "tripletsiglip", "allow_schedule_change": True},
      r"params/logit_bias only in this config.*loss tripletclip -> tripletsiglip",
    ),
    (
      {"loss": "clip_union", "allow_schedule_change": True},
      r"loss tripletclip -> clip_union changes what the data",
    ),
  ]:
    with pytest.raises(
      ConfigError, match=r"Refusing to resume .* from checkpoint 4: .*" + needle
    ) as e:
      train(small_config(data_dir, **cfg, **change), w)
    assert "\n" not in str(e.value) and "Nothing was changed" in str(e.value)
    assert sorted(os.listdir(os.path.join(w, "checkpoints"))) == before
    assert not os.path.exists(os.path.join(w, "damaged_checkpoints"))
  # As before, and a changed worker count resumes from the same position (moved to the workers'
  # layout).
  capsys.readouterr()
  out = train(small_config(data_dir, stop_after_steps=2, **{"data.num_workers": 2}, **cfg), w)
  assert (
    out["step"] == 6 and "Resuming with data.num_workers changed: 0 -> 2" in capsys.readouterr().out
  )
  _, meta = checkpoint.read_meta(w)
  assert meta["resume_changes"] == [{"step": 4, "key": "data.num_workers", "before": 0, "now": 2}]


def test_settings_that_leave_the_state_alone_resume_exactly(data_dir, tmp_path):
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  cfg = dict(total_steps=8, checkpoint_every_steps=4, eval_every_steps=100)
  train(small_config(data_dir, **cfg), a)
  train(small_config(data_dir, stop_after_steps=4, **cfg), b)
  neutral = {
    "data.read_threads": 1,
    "eval_every_steps": 8,
    "log_every_steps": 1,
    "keep_checkpoints": 5,
  }
  train(small_config(data_dir, **{**cfg, **neutral}), b)
  assert _losses(a) == {s: v for s, v in _losses(b).items() if s % 2 == 0}


def test_an_edited_iterator_state_is_damage(data_dir, tmp_path, capsys):
  w = str(tmp_path / "w")
  cfg = dict(total_steps=8, checkpoint_every_steps=2, eval_every_steps=100)
  train(small_config(data_dir, stop_after_steps=4, **cfg), w)
  path = os.path.join(w, "checkpoints", "4", "data", "process_0-of-1.json")
  state = json.load(open(path))
  state["next_index"] += 1  # one digit: it used to resume silently, one example off
  json.dump(state, open(path, "w"))
  # Checkpoint 2's crc as earlier versions wrote it on a pod (gathered as int32: wrapped negative for
  # a crc of 2**31 or more) still matches.
  meta_path = os.path.join(w, "checkpoints", "2", "meta", "metadata")
  meta = json.load(open(meta_path))
  meta["data_checksums"] = [c - 2**32 for c in meta["data_checksums"]]
  json.dump(meta, open(meta_path, "w"))
  capsys.readouterr()
  train(small_config(data_dir, stop_after_steps=2, **cfg), w)
  out = capsys.readouterr().out
  assert (
    "Checkpoint 4 in" in out
    and "the data iterator's state (data/process_0-of-1.json) differs" in out
  ), out
  assert "Resumed from step 2" in out


def test_a_checkpoint_from_8_devices_loads_on_1(data_dir, tmp_path):
  w, out = str(tmp_path / "w"), str(tmp_path / "params.npz")
  # Stopped after step 2 (its checkpoint), without the final evaluation, which is not the subject.
  train(small_config(data_dir, stop_after_steps=2, checkpoint_every_steps=2), w, devices=8)
  assert jax.device_count() == 8
  code = (
    "import jax, numpy as np, tripletclip_jax as tc; assert jax.device_count() == 1; "
    f"m = tc.load({w!r}); np.savez({out!r}, *[np.asarray(x) for x in jax.tree.leaves(m.params)])"
  )
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  r = subprocess.run(
    [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
  )
  assert r.returncode == 0, r.stderr[-2000:]
  got = np.load(out)
  _, want = checkpoint.load_params(w)
  for i, x in enumerate(jax.tree.leaves(want)):
    np.testing.assert_array_equal(got[f"arr_{i}"], np.asarray(x))
