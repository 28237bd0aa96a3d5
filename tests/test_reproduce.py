"""launch/reproduce.py end to end on a small world: the results layout, compute matching, resumability."""

import json
import os
import subprocess
import sys

from tripletclip_jax.evaluate.sugarcrepe import SUBSETS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = [
  "--config.batch_size=8",
  "--config.total_steps=4",
  "--config.log_every_steps=2",
  "--config.checkpoint_every_steps",
  "4",
  "--config.data.demo_num_train=32",
  "--config.data.demo_num_eval=4",
  "--set",
  "export_hf_dir=''",
]  # --set is an alias


def _run(out, *args):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  p = subprocess.run(
    [sys.executable, os.path.join(ROOT, "launch/reproduce.py"), "--output_dir", out, *args],
    capture_output=True,
    text=True,
    env=env,
    cwd=ROOT,
    timeout=900,
  )
  assert p.returncode == 0, p.stderr[-3000:]
  return p.stdout


def test_reproduce_writes_the_table_and_resumes(tmp_path):
  out = str(tmp_path / "r")
  log = _run(out, "--losses", "clip,tripletclip", "--seeds", "0", *SMALL)
  res = json.load(open(f"{out}/results.json"))
  runs = {r["loss"]: r for r in res["runs"]}
  assert set(runs) == {"clip", "tripletclip"}
  # Equal image-text pairs encoded: the CLIP run takes twice TripletCLIP's steps.
  assert runs["tripletclip"]["steps"] == 4 and runs["clip"]["steps"] == 8
  assert len({r["pairs_seen"] for r in runs.values()}) == 1
  for r in runs.values():
    assert r["seed"] == 0
    for split in ("heldout", "seen"):
      assert set(r[split]) == {*SUBSETS, "mean", "binding_mean"}
      assert all(0 <= v <= 100 for v in r[split].values())
  assert res["world"]["heldout_symbols"] == [0, 1] and "image-text pairs" in res["rule"]
  assert [d["seed"] for d in res["tripletclip_minus_clip"]] == [0]
  table = open(f"{out}/results.md").read()
  assert "| TripletCLIP | 1 |" in table and "Replace rel" in table and "TripletCLIP − CLIP" in table
  assert os.path.getsize(f"{out}/results.png") > 10_000
  assert "TripletCLIP − CLIP" in log

  # A second invocation skips finished runs; a new seed trains only that seed.
  log = _run(
    out,
    "--losses",
    "clip,tripletclip",
    "--seeds",
    "0",
    *SMALL,
    "--reference",
    f"{out}/results.json",
  )
  assert log.count("finished earlier with these settings, reused") == 2 and "Reference" in log
  # Other settings than a finished run trained with: stop, naming them (the table would mislabel the run).
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  p = subprocess.run(
    [sys.executable, os.path.join(ROOT, "launch/reproduce.py"), "--output_dir", out, "--losses", "clip",
     "--seeds", "0", *SMALL, "--config.total_steps=10", "--config.progress_bar=True"],
    capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
  )  # fmt: skip
  err = p.stderr.strip().splitlines()
  assert (
    p.returncode != 0
    and len(err) == 1
    and "clip-seed0/result.json was trained with other settings" in err[0]
  )
  assert "total_steps 4 -> 10" in err[0] and "progress_bar" not in err[0], err
  _run(out, "--losses", "tripletclip", "--seeds", "0,1", *SMALL)
  res = json.load(open(f"{out}/results.json"))
  assert sorted((r["loss"], r["seed"]) for r in res["runs"]) == [
    ("tripletclip", 0),
    ("tripletclip", 1),
  ]
  assert res["summary"]["tripletclip"]["heldout"]["mean"][2] == 2


def test_reproduce_rejects_bad_arguments(tmp_path):
  for args, msg in (
    (["--losses", "clip,bogus"], "unknown loss 'bogus'"),
    (["--seeds", "a"], "--seeds"),
    (["--set", "nope=1"], "Unknown config key 'nope'"),
    (["--config.batch_sise=8"], "Unknown config key 'batch_sise'; did you mean batch_size?"),
    (["--config.batch_size=eight"], "config.batch_size='eight': give an integer"),
    (["--config.seed=7"], "--config.seed=7: loss, seed, data.demo_data_dir are set by this script"),
  ):
    p = subprocess.run(
      [
        sys.executable,
        os.path.join(ROOT, "launch/reproduce.py"),
        "--output_dir",
        str(tmp_path),
        *args,
      ],
      capture_output=True,
      text=True,
      cwd=ROOT,
    )
    assert p.returncode != 0 and msg in p.stderr and "Traceback" not in p.stderr, p.stderr
