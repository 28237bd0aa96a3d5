"""Weights & Biases as a writer, with the real `wandb` package offline: the run holds the config and
every metric of metrics.jsonl, the final evaluation as a table, and a resumed run continues the same
W&B run."""

import glob
import json
import os
import sys

import pytest

wandb = pytest.importorskip("wandb")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_trainer import data_dir, small_config, train  # noqa: E402, F401 - the shared demo world
from tripletclip_jax.train.metrics import RUN_ID_FILE, read_metrics  # noqa: E402


def _records(path: str):
  """The protobuf records of a W&B transaction log (.wandb): a 7-byte header, then LevelDB's log
  format (32 KiB blocks; each chunk a 7-byte header: crc32, length, type 1 full / 2 first / 3 middle
  / 4 last)."""
  from wandb.proto import wandb_internal_pb2

  data, pos, pending = open(path, "rb").read(), 7, b""
  while pos + 7 <= len(data):
    if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
      pos += 32768 - pos % 32768
      continue
    length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
    pending += data[pos + 7 : pos + 7 + length]
    pos += 7 + length
    if kind in (1, 4):
      record = wandb_internal_pb2.Record()
      record.ParseFromString(pending)
      pending = b""
      yield record


def _history(run_dir: str) -> dict[int, dict]:
  out = {}
  for path in glob.glob(os.path.join(run_dir, "*.wandb")):
    for r in _records(path):
      if r.WhichOneof("record_type") == "history":
        items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
        out.setdefault(items["_step"], {}).update(items)
  return out


def _config(run_dir: str) -> dict:
  out = {}
  for path in glob.glob(os.path.join(run_dir, "*.wandb")):
    for r in _records(path):
      kind = r.WhichOneof("record_type")
      updates = (
        r.run.config.update if kind == "run" else r.config.update if kind == "config" else []
      )
      out.update({u.key: json.loads(u.value_json) for u in updates})
  return out


def test_wandb_run_holds_the_metrics_and_config_and_a_resume_continues_it(
  data_dir, tmp_path, monkeypatch
):
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_SILENT", "true")
  w = str(tmp_path / "w")
  over = {"writers": "tensorboard,wandb", "wandb.name": "tc-test", "eval_every_steps": 8}
  out = train(small_config(data_dir, stop_after_steps=4, **over), w)
  assert out["stopped"]
  run_id = open(os.path.join(w, RUN_ID_FILE)).read().strip()
  train(small_config(data_dir, **over), w)
  runs = sorted(glob.glob(os.path.join(w, "wandb", f"offline-run-*-{run_id}*")))
  assert len(runs) == 2, runs  # the same run id, resumed
  history = {}
  for r in runs:
    history.update(_history(r))
  ours = read_metrics(w)
  assert sorted(ours) == sorted(history) == [2, 4, 6, 8]
  for step, rec in ours.items():
    for k, v in rec.items():
      if k not in ("step", "time"):
        assert history[step][k] == pytest.approx(v), (step, k)
  # The final evaluation as a wandb.Table: a row per (evaluator, metric).
  evals = [k for k in ours[8] if k.startswith("eval/")]
  assert history[8]["eval/table/_type"] == "table-file"
  assert history[8]["eval/table/nrows"] == len(evals)
  config = _config(runs[0])
  assert (
    config["loss"] == "tripletclip"
    and config["batch_size"] == 16
    and config["wandb"]["name"] == "tc-test"
  )


def test_an_unknown_writer_is_one_line(data_dir, tmp_path):
  from tripletclip_jax.configlib import ConfigError

  with pytest.raises(
    ConfigError, match=r"config.writers='tensorboard,wandbb': a comma-separated list of"
  ):
    train(small_config(data_dir, writers="tensorboard,wandbb"), str(tmp_path))


def test_wandb_problems_are_one_line_before_anything_is_written(data_dir, tmp_path, monkeypatch):
  monkeypatch.setenv("WANDB_MODE", "offline")
  over = {"writers": "wandb"}
  w = tmp_path / "file"
  w.mkdir()
  (w / "wandb").write_text("not a folder")
  with pytest.raises(ValueError, match=r"file/wandb is not a folder, and W&B keeps its run there"):
    train(small_config(data_dir, **over), str(w))
  w = tmp_path / "corrupt"
  w.mkdir()
  (w / RUN_ID_FILE).write_bytes(b"\x00\xffgarbage/..")
  with pytest.raises(ValueError, match=r"corrupt/wandb_run_id does not hold a W&B run id"):
    train(small_config(data_dir, **over), str(w))
  assert sorted(os.listdir(w)) == [RUN_ID_FILE]  # no lock, no checkpoints
