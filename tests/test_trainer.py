"""The trainer end to end: exact resume, kill and preemption, overrides, the demo (several
processes: test_gcs)."""

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tripletclip_jax.demo import world as demo_world
from tripletclip_jax import checkpoint
from tripletclip_jax.configlib import ConfigError
from tripletclip_jax.train.experiment import build
from tripletclip_jax.train.loop import train_and_evaluate
from tripletclip_jax.train.metrics import read_metrics
from tripletclip_jax.train.workdir_lock import WorkdirBusy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import demo  # noqa: E402


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("demo_data"))
  demo_world.write_demo_data(d, num_train=96, num_eval=6, seed=0, num_shards=2)
  return d


def small_config(data_dir, **overrides):
  c = demo.get_config()
  with c.unlocked():
    c.batch_size, c.total_steps, c.compute_matched = 16, 8, False
    c.log_every_steps, c.checkpoint_every_steps, c.eval_every_steps = 2, 4, 8
    c.data.source.dir = data_dir
    # The fixture's world: every run (whatever its seed) reads it, as written.
    c.data.source.num_train, c.data.source.num_eval, c.data.source.world_seed = 96, 6, 0
    c.data.source.num_base = 0
    c.data.in_memory = False  # the streaming pipeline, which every real dataset takes
    # One residual block a tower: these tests are about the trainer, and XLA compiles a one-block
    # step in about two thirds of the time of the demo's two (benchmarks/RESULTS.md).
    c.model.layers = 1
    c.export_hf_dir = None
    c.progress_bar = False
    for k, v in overrides.items():
      node = c
      *parents, leaf = k.split(".")
      for p in parents:
        node = node[p]
      node[leaf] = v
  return c


def train(config, workdir, devices=2):
  """`train_and_evaluate` on the first `devices` of the 8 fake devices: two shard the batch as eight
  do, at about half the CPU time (the tests whose subject is the 8-device mesh pass 8)."""
  return train_and_evaluate(config, workdir, devices=jax.devices()[:devices])


def _cli_overrides(data_dir, **extra):
  kv = {
    "batch_size": 16,
    "total_steps": 8,
    "compute_matched": False,
    "log_every_steps": 2,
    "checkpoint_every_steps": 4,
    "eval_every_steps": 100,
    "data.source.dir": data_dir,
    "data.source.num_train": 96,
    "data.source.num_eval": 6,
    "data.source.num_base": 0,
    "data.source.world_seed": 0,
    "model.layers": 1,  # as small_config's
    "progress_bar": False,
    # The export is test_demo_config_end_to_end's and test_gcs.py's (export_hf.py to a bucket).
    "export_hf_dir": "",
    **extra,
  }
  return [f"--config.{k}={v}" for k, v in kv.items()]


def _losses(workdir):
  return {
    s: (r["loss"], r["i2t_acc"], r["grad_norm"])
    for s, r in read_metrics(workdir).items()
    if "loss" in r
  }


def test_resume_is_bit_identical(data_dir, tmp_path):
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  train(small_config(data_dir, profile_steps=(2, 4)), a)  # a trace changes no number
  traces = [
    f for _, _, fs in os.walk(os.path.join(a, "profile")) for f in fs if f.endswith(".xplane.pb")
  ]
  assert len(traces) == 1
  out = train(small_config(data_dir, stop_after_steps=4), b)
  assert out == {"step": 4, "stopped": True}
  train(small_config(data_dir), b)
  assert _losses(a) == _losses(b) and sorted(_losses(a)) == [2, 4, 6, 8]
  _, pa = checkpoint.load_params(a)
  _, pb = checkpoint.load_params(b)
  for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  final = read_metrics(a)[8]
  assert "eval/sugarcrepe_heldout/mean" in final and "eval/triplet_heldout/group" in final
  assert final["pairs_seen"] == 8 * 16 * 2
  assert all(final[f"bad_records/{r}"] == 0 for r in ("undecodable_image", "crc_mismatch"))
  # The run's mesh is the 2 devices it was given, not the process's 8.
  assert final["examples_per_s_per_chip"] == pytest.approx(final["examples_per_s"] / 2)


def test_changed_schedule_is_refused(data_dir, tmp_path):
  w = str(tmp_path / "w")
  train(small_config(data_dir, stop_after_steps=2, checkpoint_every_steps=2), w)
  with pytest.raises(ValueError, match=r"schedule changed \(total_steps 8 -> 10\)"):
    train(small_config(data_dir, total_steps=10), w)
  out = train(
    small_config(data_dir, total_steps=10, allow_schedule_change=True, stop_after_steps=2), w
  )
  assert out["step"] == 4
  with pytest.raises(FileNotFoundError, match="has no checkpoint at step 5; it has steps 2, 4"):
    checkpoint.load_params(w, 5)


def test_resume_refuses_a_changed_model_and_records_changed_data(data_dir, tmp_path):
  w = str(tmp_path / "w")
  train(small_config(data_dir, stop_after_steps=2, checkpoint_every_steps=2), w)
  with pytest.raises(ValueError, match=r"the model changed \(act gelu -> quick_gelu\)"):
    train(small_config(data_dir, **{"model.act": "quick_gelu"}), w)
  with pytest.raises(ValueError, match=r"the model changed \(.*vision.patch_size 16 -> 8"):
    train(small_config(data_dir, **{"model.preset": "tiny"}), w)
  # A setting whose change would make the saved data position mean something else: one line, nothing
  # moved.
  with pytest.raises(ValueError, match=r"data.partners paired -> shuffled changes what the saved"):
    train(small_config(data_dir, **{"data.partners": "shuffled"}), w)
  # Settings tagged RECORDED may change: said in one line and kept in the meta; DRIVING ones
  # silently. Streaming -> in memory reads on from the same record (the position counts records
  # either way).
  lr = {"optimizer.learning_rate": 1e-3, "log_every_steps": 1, "data.in_memory": True}
  out = train(small_config(data_dir, seed=7, stop_after_steps=2, **lr), w)
  assert out["step"] == 4
  with open(os.path.join(w, "checkpoints", "4", "data", "process_0-of-1.json")) as f:
    assert json.load(f) == {"next_index": 4 * 16}
  _, meta = checkpoint.read_meta(w)
  assert meta["resume_changes"] == [
    {"step": 2, "key": "optimizer.learning_rate", "before": 0.002, "now": 0.001},
    {"step": 2, "key": "seed", "before": 0, "now": 7},
  ]


def test_non_finite_loss_names_the_step(data_dir, tmp_path):
  # A temperature whose exponential overflows: the first loss is not finite. (An initial value, not
  # a constant of the compiled step, which is the one the other tests compiled.)
  cfg = small_config(data_dir, **{"loss_init.logit_scale": 1e4, "checkpoint_every_steps": 8})
  with pytest.raises(
    FloatingPointError, match=r"Non-finite loss .* at step \d+; last good checkpoint: none yet"
  ):
    train(cfg, str(tmp_path / "nan"))


def launcher(name: str):
  """launch/NAME.py as a module, to call its functions in this process."""
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "launch", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _main(workdir, *args, env=None, **kw):
  return subprocess.Popen(
    [
      sys.executable,
      os.path.join(ROOT, "launch/main.py"),
      "--config",
      "configs/demo.py",
      "--workdir",
      workdir,
      *args,
    ],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env=env,
    **kw,
  )


def _cpu_env(devices):
  return dict(
    os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu"
  )


def _wait_for(path, proc, timeout=240):
  t = time.time()
  while not os.path.exists(path):
    assert proc.poll() is None, proc.communicate()
    assert time.time() - t < timeout, f"timed out waiting for {path}"
    time.sleep(0.2)


def test_sigkill_then_restart_completes(data_dir, tmp_path):
  w = str(tmp_path / "k")
  args = _cli_overrides(data_dir, total_steps=12, checkpoint_every_steps=4, log_every_steps=4)
  # No cache from the test session: the trainer's own, in the workdir by default.
  env = {k: v for k, v in _cpu_env(2).items() if k != "JAX_COMPILATION_CACHE_DIR"}
  p = _main(w, *args, env=env)
  _wait_for(os.path.join(w, "checkpoints", "4"), p)
  p.kill()
  p.wait()
  p = _main(w, *args, env=env)
  out, err = p.communicate(timeout=600)
  assert p.returncode == 0, err
  assert "Resumed from step" in out
  # the killed run's lock did not block it
  assert checkpoint.read_meta(w)[0] == 12 and 12 in read_metrics(w)
  # The restart loaded what the killed run compiled, and said where its start-up went.
  startup = re.search(
    r"Start-up: [\d.]+ s to the first step: imports [\d.]+ s, .*restore [\d.]+ s, .*first step "
    r"[\d.]+ s; compiling .* (\d+) of (\d+) from the persistent cache",
    out,
  )
  assert startup and int(startup[1]) > 0, out
  assert os.listdir(os.path.join(w, "jax_cache"))
  # the restart's first record
  first = read_metrics(w)[int(re.search(r"Resumed from step (\d+)", out)[1]) + 4]
  assert first["startup/cache_hits"] == int(startup[1]) and first["startup/total_s"] > 0


def test_sigterm_leaves_a_checkpoint_and_the_lock_refuses_a_second_trainer(data_dir, tmp_path):
  w = str(tmp_path / "t")
  p = _main(
    w,
    *_cli_overrides(
      data_dir, total_steps=100000, checkpoint_every_steps=100000, preempted_exit_code=75
    ),
    env=_cpu_env(2),
  )
  _wait_for(os.path.join(w, "metrics.jsonl"), p)
  while not open(os.path.join(w, "metrics.jsonl")).read():  # training has started
    time.sleep(0.2)
  with pytest.raises(WorkdirBusy, match=rf"{w} is in use by another trainer \(pid {p.pid} on "):
    train(small_config(data_dir), w)
  p.send_signal(signal.SIGTERM)
  out, err = p.communicate(timeout=120)
  assert p.returncode == 75, err  # a scheduler that restarts only failed jobs wants non-zero
  assert "SIGTERM: saved checkpoint" in out
  step, _ = checkpoint.read_meta(w)
  assert 0 < step < 100000


@pytest.fixture
def small_disk(tmp_path):
  """mount(size, ro) -> a fresh tmpfs of that size (root only: skipped where mounting is not
  allowed)."""
  mounts = []

  def mount(size="3m", ro=False):
    d = tmp_path / f"mnt{len(mounts)}"
    d.mkdir()
    r = subprocess.run(
      ["mount", "-t", "tmpfs", "-o", f"size={size}" + (",ro" if ro else ""), "tmpfs", str(d)],
      capture_output=True,
      text=True,
    )
    if r.returncode:
      pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    mounts.append(d)
    return str(d)

  yield mount
  for d in mounts:
    subprocess.run(["umount", str(d)], check=False)


def test_read_only_and_full_workdirs_are_one_line(data_dir, small_disk):
  with pytest.raises(
    ValueError, match=r"Cannot write to the workdir .*\(Read-only file system\): choose a writable"
  ):
    train(small_config(data_dir), os.path.join(small_disk(ro=True), "run"))
  with pytest.raises(
    ValueError, match=r"No space for a checkpoint in .*MiB free, about .*MiB needed.*none yet"
  ):
    train(small_config(data_dir), os.path.join(small_disk("2m"), "run"))
  # Room for one checkpoint (~34 MB compressed; 83 MiB raw, which the first estimate used to
  # demand), not two.
  w = os.path.join(small_disk("50m"), "run")
  cfg = small_config(data_dir, checkpoint_every_steps=2, eval_every_steps=100)
  with pytest.raises(ValueError, match=r"No space .*the last complete checkpoint is step 2\."):
    train(cfg, w)
  with pytest.raises(ValueError, match=r"No space .*the last complete checkpoint is step 2\."):
    train(cfg, w)  # the restart knows it too
  state = ocp.StandardCheckpointer().restore(os.path.join(w, "checkpoints", "2", "state"))
  estimate, measured = (
    checkpoint.checkpoint_bytes(w, None, state),
    checkpoint.checkpoint_bytes(w, 2, None),
  )
  # the first estimate, before any checkpoint
  assert 1 / 1.3 < estimate / measured < 1.3, (
    estimate,
    measured,
  )


@pytest.mark.parametrize(
  "arg,needle",
  [
    ("--config.batchsize=3", "Unknown config key 'batchsize'; did you mean batch_size"),
    ("--config.batch_size=abc", "batch_size"),
    ("--config.optimizer.learnin_rate=1", "optimizer.learning_rate"),
    ("--config.loss=tripletclp", "config.loss='tripletclp': choose one of"),
  ],
)
def test_bad_override_exits_2_with_one_line(tmp_path, capsys, arg, needle):
  # launch/main.py's main, in this process (a process each cost 2.5 s of start-up): nothing started.
  with pytest.raises(SystemExit) as e:
    launcher("main").main(
      ["--config", os.path.join(ROOT, "configs/demo.py"), "--workdir", str(tmp_path / "x"), arg]
    )
  lines = capsys.readouterr().err.strip().splitlines()
  assert e.value.code == 2 and len(lines) == 1 and needle in lines[0], lines
  assert not os.path.exists(tmp_path / "x")


def test_a_bad_override_exits_2_as_a_process(tmp_path):
  """The same as a process: nothing else on stderr (no traceback, no library warning)."""
  p = _main(str(tmp_path / "x"), "--config.batchsize=3")
  _, err = p.communicate(timeout=120)
  lines = [line for line in err.strip().splitlines() if line.strip()]
  assert p.returncode == 2 and len(lines) == 1 and "did you mean batch_size" in lines[0], err


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _pod(workdir, args, processes=2, devices=4, env=None):
  """`processes` trainers x `devices`/`processes` CPU devices on one coordinator: a simulated pod
  slice sharing `workdir`."""
  port = _free_port()
  env = dict(
    env or os.environ,
    **{
      k: v for k, v in _cpu_env(devices // processes).items() if k in ("XLA_FLAGS", "JAX_PLATFORMS")
    },
  )
  return [
    _main(
      workdir,
      *args,
      f"--config.distributed.coordinator_address=127.0.0.1:{port}",
      f"--config.distributed.num_processes={processes}",
      f"--config.distributed.process_id={i}",
      env=dict(env, PYTHONUNBUFFERED="1"),
    )
    for i in range(processes)
  ]


def _finish(procs, code=0):
  outs = []
  for p in procs:
    out, err = p.communicate(timeout=600)
    assert p.returncode == code, err[-3000:]
    outs.append(out)
  return outs


def test_demo_config_end_to_end(tmp_path):
  w = str(tmp_path / "demo")
  p = _main(
    w,
    "--config.total_steps=6",
    "--config.log_every_steps=3",
    "--config.data.source.num_train=64",
    "--config.data.source.num_eval=5",
    "--config.data.source.num_base=32",
    "--config.batch_size=16",
    "--config.progress_bar=False",
    env=_cpu_env(1),
  )
  out, err = p.communicate(timeout=600)
  assert p.returncode == 0, err
  assert "| sugarcrepe_heldout |" in out and "Exported a transformers CLIPModel" in out
  cfg = json.load(open(os.path.join(w, "hf", "config.json")))
  assert cfg["model_type"] == "clip"
  assert os.path.exists(os.path.join(w, "tensorboard"))
  # The workdir's checkpoint for open_clip, through the exporter's command line; it reads back bit
  # for bit.
  sys.path.insert(0, os.path.join(ROOT, "launch"))
  import export_hf

  from tripletclip_jax.interop import openclip

  oc = str(tmp_path / "oc")
  export_hf.main(["--workdir", w, "--output_dir", oc, "--format", "open_clip", "--name", "demo-tc"])
  want_cfg, want = checkpoint.load_params(w)
  got_cfg, got = openclip.load(os.path.join(oc, "demo-tc.json"), os.path.join(oc, openclip.WEIGHTS))
  assert (
    got_cfg.vision == want_cfg.vision
    and got_cfg.text == want_cfg.text
    and got_cfg.act == want_cfg.act
  )
  for x, y in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_init_from_hugging_face(data_dir, tmp_path):
  """The network and the weights come from the Hugging Face directory. (Its network is
  small_config's, so the step is the one the other tests compiled.)"""
  from tripletclip_jax.interop import hf
  from tiny_models import clip_params, one_block
  from tripletclip_jax.models import get_preset

  cfg = one_block(get_preset("demo"))
  src = clip_params(cfg, 7)
  hf.export_hf(cfg, src, str(tmp_path / "hf_src"))
  hf.export_hf(cfg.replace(act="quick_gelu"), src, str(tmp_path / "hf_quick"))
  # The network is the checkpoint's, not the preset's (gelu)...
  exp = build(small_config(data_dir, init_from=f"hf:{tmp_path / 'hf_quick'}"), abstract=True)
  assert exp.model_config.act == "quick_gelu"
  # ...and an ablation key may restate its depth, not change it.
  for key, value, have in (("layers", 2, "1"), ("patch_size", 8, "16")):
    with pytest.raises(ConfigError, match=rf"model.{key}={value}, but .* has {have}: the network"):
      build(
        small_config(data_dir, init_from=f"hf:{tmp_path / 'hf_src'}", **{f"model.{key}": value})
      )
  # The first step of the warmup has learning rate 0: the checkpoint after it holds exactly the
  # imported weights. (small_config's model.layers=1 restates the checkpoint's depth: accepted.)
  w = str(tmp_path / "ft")
  init = {"init_from": f"hf:{tmp_path / 'hf_src'}", "stop_after_steps": 1}
  train(small_config(data_dir, checkpoint_every_steps=1, **init), w)
  got_cfg, got = checkpoint.load_params(w)
  assert got_cfg == cfg
  for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(src)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_lit_config_locks_the_pretrained_image_tower(data_dir, tmp_path):
  """configs/lit.py on the demo world from a Hugging Face directory: the image tower stays
  bit-identical."""
  from tripletclip_jax.interop import hf
  from tiny_models import clip_params, one_block
  from tripletclip_jax.models import get_preset
  from tripletclip_jax.configlib import apply_overrides, load_config_file

  cfg = one_block(get_preset("demo", act="quick_gelu"))
  src = clip_params(cfg, 7)
  hf.export_hf(cfg, src, str(tmp_path / "hf_src"))
  c = load_config_file(os.path.join(ROOT, "configs/lit.py"), "loss=negclip,world=demo")
  apply_overrides(
    c,
    [
      "batch_size=16",
      "total_steps=3",
      "log_every_steps=1",
      "checkpoint_every_steps=3",
      f"data.source.dir={data_dir}",
      "data.source.num_train=96",
      "data.source.num_base=0",
      "data.source.num_eval=6",
      "data.source.world_seed=0",
      "progress_bar=False",
      "export_hf_dir=None",
      f"init_from=hf:{tmp_path / 'hf_src'}",
      "evals={}",
    ],
  )
  w = str(tmp_path / "lit")
  train(c, w)
  _, got = checkpoint.load_params(w)
  for x, y in zip(jax.tree.leaves(got["visual"]), jax.tree.leaves(src["visual"])):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert not np.allclose(np.asarray(got["text"]["text_projection"]), src["text"]["text_projection"])


def test_missing_training_data_is_one_line(tmp_path):
  p = subprocess.Popen(
    [
      sys.executable,
      os.path.join(ROOT, "launch/main.py"),
      "--config",
      "configs/cc3m.py",
      "--workdir",
      str(tmp_path / "w"),
      f"--config.data.train={tmp_path}/none-*.tfrecord",
    ],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env=_cpu_env(1),
  )
  _, err = p.communicate(timeout=300)
  assert p.returncode == 1 and "Traceback" not in err
  assert err.strip().splitlines()[-1].startswith("error: No TripletData files match")


def test_named_evaluators_run_on_their_own_schedules(data_dir, tmp_path):
  # SugarCrepe's JSON files in one folder, its images (COCO val2017 for the real benchmark) in
  # another.
  json_dir = tmp_path / "sugarcrepe"
  json_dir.mkdir()
  for f in os.listdir(os.path.join(data_dir, "sugarcrepe")):
    if f.endswith(".json"):
      shutil.copy(os.path.join(data_dir, "sugarcrepe", f), json_dir / f)
  images = os.path.join(data_dir, "sugarcrepe", "images")
  evals = {
    "coco_style": {
      "type": "sugarcrepe",
      "sugarcrepe_dir": str(json_dir),
      "image_dir": images,
      "every_steps": 1,
    },
    "held": {"type": "triplet", "pattern": os.path.join(data_dir, "heldout")},
    "unset": {"type": "winoground", "path": None},
  }  # declared without data: skipped, said once
  w = str(tmp_path / "w")
  out = train(
    small_config(data_dir, total_steps=2, log_every_steps=1, checkpoint_every_steps=2, evals=evals),
    w,
  )
  assert (
    0 <= out["eval/coco_style/mean"] <= 100 and out["eval/coco_style/skipped_missing_images"] == 0
  )
  m = read_metrics(w)
  # every_steps 1; the default is 8
  assert "eval/coco_style/mean" in m[1] and "eval/held/group" not in m[1]
  assert "eval/held/group" in m[2] and not any(k.startswith("eval/unset") for k in m[2])
  evals["coco_style"] = {
    "type": "sugarcrepe",
    "sugarcrepe_dir": str(json_dir),
  }  # the images are elsewhere
  with pytest.raises(FileNotFoundError, match=r"--config.evals.NAME.image_dir"):
    train(
      small_config(data_dir, total_steps=2, checkpoint_every_steps=2, evals=evals),
      str(tmp_path / "w2"),
    )


@pytest.mark.parametrize(
  "key,value,needle",
  [
    ("batch_size", 0, "positive"),
    ("total_steps", 0, "positive"),
    ("accum_steps", 0, ">= 1"),
    ("log_every_steps", 0, ">= 1"),
    ("checkpoint_every_steps", 0, ">= 1"),
    ("keep_checkpoints", 0, ">= 1"),
    ("data.crop_scale", (0.5, 1.5), "0 < lo <= hi <= 1"),
    ("data.crop_scale", (0.9,), "pair"),
    ("model.dtype", "bfloat", "float32 or bfloat16"),
    ("optimizer.decay_rule", "none", "decay_rule"),
    ("data.augment", "mixup", "augment"),
    ("compute_rule", "time", "compute_rule"),
  ],
)
def test_impossible_config_values_are_one_line(data_dir, tmp_path, key, value, needle):
  with pytest.raises(ConfigError, match=f"config.{key}=") as e:
    train(small_config(data_dir, **{key: value}), str(tmp_path / "w"))
  assert needle in str(e.value) and "\n" not in str(e.value)
  assert not os.path.exists(tmp_path / "w")  # refused before anything is written


@pytest.mark.parametrize(
  "text,needle",
  [
    (None, "does not exist"),
    ("def get_config(:\n", ":1: syntax error"),
    (
      "import no_such_module\n",
      "failed to load (ModuleNotFoundError: No module named 'no_such_module')",
    ),
    ("def get_config():\n  pass\n", "get_config() returned NoneType, not a ConfigDict"),
    ("def get_config():\n  return {}\n", None),
  ],
)
def test_broken_config_files_are_one_line(tmp_path, text, needle):
  from tripletclip_jax.configlib import load_config_file

  path = tmp_path / "cfg.py"
  if text is not None:
    path.write_text(text)
  if needle is None:
    with pytest.raises(ConfigError, match=r"cfg.py takes no ':ARG' \(got 'bogus'\): drop it"):
      load_config_file(f"{path}:bogus")
    return
  with pytest.raises(ConfigError, match=re.escape(needle)):
    load_config_file(str(path))
  if "syntax" in needle:  # and through main.py: exit 2, one line, no traceback
    p = subprocess.run(
      [
        sys.executable,
        os.path.join(ROOT, "launch/main.py"),
        "--config",
        str(path),
        "--workdir",
        str(tmp_path / "w"),
      ],
      capture_output=True,
      text=True,
      timeout=120,
    )
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 2 and len(lines) == 1 and needle in lines[0], p.stderr


def test_evaluation_runs_on_sharded_params_and_compiles_once(data_dir):
  from tripletclip_jax import sharding
  from tripletclip_jax.inference import Model
  from tripletclip_jax.models import get_preset, init_params
  from tripletclip_jax.evaluate import run as run_evals
  from tripletclip_jax import evaluate
  from tripletclip_jax.train.experiment import training_source

  from tiny_models import one_block

  cfg = one_block(get_preset("demo"))
  params = init_params(cfg, jax.random.key(0))
  mesh = sharding.make_mesh(-1, 2)
  sharded = jax.device_put(params, sharding.tree_shardings(params, mesh, min_size=1024))
  assert any(
    len(x.sharding.device_set) > 1 and not x.sharding.is_fully_replicated
    for x in jax.tree.leaves(sharded)
  )
  evals = evaluate.build(training_source(small_config(data_dir), "unused")[1])
  model = Model(cfg, sharded, progress=False, mesh=mesh)  # batches split over the 8 devices
  first = run_evals(model, evals)
  # new arrays, same shardings
  model.params = jax.block_until_ready(jax.tree.map(lambda x: x * 1.0, sharded))
  compiles = []
  listener = lambda name, secs, **_: (
    compiles.append(name) if name == "/jax/core/compile/backend_compile_duration" else None
  )
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    second = run_evals(model, evals)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert compiles == [] and second == first  # nothing compiled; x * 1.0 changed no value
  host = run_evals(Model(cfg, jax.device_get(params), progress=False), evals)
  for k, v in first.items():
    assert v == pytest.approx(host[k], abs=1e-6), k


def test_a_torn_metrics_line_is_cut_before_appending_and_skipped_when_read(tmp_path, caplog):
  from tripletclip_jax.train.metrics import MetricWriter

  w = str(tmp_path)
  path = os.path.join(w, "metrics.jsonl")
  with open(path, "w") as f:  # what a kill mid-write leaves
    f.write('{"step": 2, "loss": 1.5}\n{"step": 4, "loss": 1.2}\n{"step": 6, "lo')
  writer = MetricWriter(w, echo=None)
  writer.write(6, {"loss": 1.0})
  writer.close()
  assert [json.loads(line)["step"] for line in open(path)] == [2, 4, 6]  # no glued record
  assert "Dropped a torn last line of " + path in caplog.text
  with open(path, "a") as f:
    f.write("not json\n")
  caplog.clear()
  assert {s: r["loss"] for s, r in read_metrics(w).items()} == {2: 1.5, 4: 1.2, 6: 1.0}
  assert f"Skipped line 4 of {path}" in caplog.text


def test_tensorboard_events_are_written_without_importing_torch(tmp_path):
  """tensorboardX imports torch when it can (1.5 s of every start-up); the writer hides it, and
  torch still imports afterwards."""
  code = (
    "import sys; from tripletclip_jax.train.metrics import MetricWriter\n"
    f"w = MetricWriter({str(tmp_path)!r}, echo=None); w.write(2, {{'loss': 1.5}}); w.close()\n"
    "assert 'torch' not in sys.modules, 'torch was imported'\n"
    "import torch; print('torch', torch.__version__)\n"
  )
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert r.returncode == 0 and "torch " in r.stdout, r.stderr[-2000:]
  events = os.listdir(tmp_path / "tensorboard")
  assert len(events) == 1 and events[0].startswith("events.out.tfevents")
