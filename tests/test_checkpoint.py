"""Damaged checkpoints: flipped bytes, deleted and truncated files are found, reported and skipped."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tripletclip_jax import checkpoint
from tripletclip_jax.train.loop import train_and_evaluate
from test_trainer import _losses, data_dir, small_config  # noqa: F401 - the module-scoped demo data fixture


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
  flipped = x.at[2, 3].set(jax.lax.bitcast_convert_type(jax.lax.bitcast_convert_type(x[2, 3], jnp.uint32) ^ 1,
                                                        jnp.float32))
  swapped = x.at[0, 1].set(x[1, 0]).at[1, 0].set(x[0, 1])
  assert checkpoint.checksums({"w": flipped})["w"] != base["w"]
  assert checkpoint.checksums({"w": swapped})["w"] != base["w"]
  mesh = jax.make_mesh((4,), ("d",))
  sharded = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d")))
  assert checkpoint.checksums({"w": sharded})["w"] == base["w"]
  with pytest.raises(checkpoint.DamagedCheckpoint, match=r"checkpoint 7: 1 array\(s\) differ .*\(w\)"):
    checkpoint.verify({"w": flipped}, base, 7)


def test_damaged_newest_checkpoints_fall_back_to_the_intact_one(data_dir, tmp_path, capsys):
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  cfg = dict(total_steps=8, checkpoint_every_steps=2, eval_every_steps=100, log_every_steps=2)
  train_and_evaluate(small_config(data_dir, stop_after_steps=6, **cfg), b)  # checkpoints 2, 4 and 6
  _flip(_largest_state_file(b, 6))  # silent before checksums: it resumed with 3.4e38 in the embedding
  victim = _largest_state_file(b, 4)
  os.truncate(victim, os.path.getsize(victim) // 3)
  capsys.readouterr()
  train_and_evaluate(small_config(data_dir, **cfg), b)
  out = capsys.readouterr().out
  assert "Checkpoint 6 in" in out and "differ from their save-time checksum" in out, out
  assert "falling back to checkpoint 4" in out and "falling back to checkpoint 2" in out
  assert "Resumed from step 2" in out
  assert len(os.listdir(os.path.join(b, "damaged_checkpoints"))) == 2
  train_and_evaluate(small_config(data_dir, **cfg), a)  # uninterrupted
  assert _losses(a) == _losses(b) and max(_losses(b)) == 8


def test_export_and_trainer_refuse_when_every_checkpoint_is_damaged(data_dir, tmp_path):
  w = str(tmp_path / "w")
  train_and_evaluate(small_config(data_dir, stop_after_steps=4, checkpoint_every_steps=4), w)
  _flip(_largest_state_file(w, 4))
  with pytest.raises(checkpoint.DamagedCheckpoint, match="checkpoint 4.*pass an older --step"):
    checkpoint.load_params(w)
  with pytest.raises(checkpoint.DamagedCheckpoint, match="Every checkpoint in .* is damaged"):
    train_and_evaluate(small_config(data_dir, checkpoint_every_steps=4), w)
