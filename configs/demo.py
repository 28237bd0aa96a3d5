"""The embedded default: a tiny CLIP on the procedural demo world, no download.

  python launch/main.py --config configs/demo.py --workdir runs/demo
  python launch/main.py --config configs/demo.py:clip --workdir runs/demo_clip   # the compute-matched baseline

Generates the demo world into WORKDIR/data if absent, trains, evaluates the
held-out SugarCrepe-format benchmark and exports a Hugging Face directory to
WORKDIR/hf. Expected on 2 CPU cores: about 2.5 minutes (`make demo` from a
fresh clone, install included: 2m47s); held-out SugarCrepe mean 67.6% against
50% chance, with add/replace subsets at 65-93% and relations/swaps still near
chance at this budget (benchmarks/RESULTS.md).
"""

from tripletclip_jax.train.config import base_config


def get_config(loss: str = "tripletclip"):
  c = base_config()
  c.loss = loss
  c.batch_size = 64
  c.total_steps = 400
  c.compute_matched = True  # CLIP baselines run more steps so that every loss encodes as many pairs
  c.log_every_steps = 25
  c.checkpoint_every_steps = 200
  c.eval_every_steps = 200
  c.model.preset = "tiny"
  c.model.dtype = "float32"
  c.model.act = "gelu"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 20
  c.optimizer.weight_decay = 0.1
  c.data.num_workers = 0
  c.data.read_threads = 2
  c.data.crop_scale = (0.9, 1.0)
  c.data.demo_num_train = 1500
  c.data.demo_num_eval = 200
  c.export_hf_dir = "hf"  # relative to the workdir
  return c.lock()
