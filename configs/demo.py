"""The embedded default: a tiny CLIP on the procedural demo world v3, no download.

  python launch/main.py --config configs/demo.py --workdir runs/demo
  python launch/main.py --config configs/demo.py:clip --workdir runs/demo_clip   # the compute-matched baseline
  python launch/reproduce.py --output_dir runs/study_v3 --seeds 0,1,2,3,4,5,6,7   # the pre-registered study

Generates the demo world (docs/demo_world.md) into WORKDIR/data if absent, drawn
from the run's seed, trains, evaluates the seen and held-out SugarCrepe-format
benchmarks and the held-out triplets, and exports a Hugging Face directory to
WORKDIR/hf. Baselines are compute-matched on image-text pairs encoded: a CLIP
run takes twice TripletCLIP's steps at the same batch. About 1.5 minutes per run
on 2 CPU cores, plus half a minute to draw a world. The parameters were fixed
on development seeds (docs/results/preregistration.md).
"""

import ml_collections

from tripletclip_jax.train.config import base_config


def world():
  """The demo world's parameters (tripletclip_jax.demo.world.WorldConfig), fixed before the final seeds
  (docs/demo_world.md, "How the parameters were fixed")."""
  from tripletclip_jax.demo.world import COLORS, SHAPES, TEXTURES

  return ml_collections.ConfigDict(
    dict(
      colors=tuple(COLORS),  # 12 x 12 colours x shapes, 4 textures: easy random negatives
      shapes=SHAPES,
      textures=TEXTURES,
      zipf=0.8,
      grid=3,
      jitter=2,
      min_objects=2,
      max_objects=3,
      max_named=3,
      relation_prob=0.4,
      size_word_prob=0.25,
      texture_word_prob=0.8,
      heldout_symbols=(0, 1),
      edit_weights=dict(
        swap_att=1.0, replace_att=1.0, replace_obj=1.0, swap_obj=1.0, replace_rel=1.0
      ),
      failed_negatives=0.2,
      negative_shift=True,
      image_size=48,
    )
  )


def get_config(loss: str = "tripletclip"):
  c = base_config()
  c.loss = loss
  c.batch_size = 64
  c.total_steps = 500
  c.compute_matched = True  # baselines run more steps so that every loss encodes as many pairs
  c.log_every_steps = 25
  c.checkpoint_every_steps = 200
  c.eval_every_steps = 1_000_000  # evaluate at the end only
  c.model.preset = "demo"
  c.model.dtype = "float32"
  c.model.act = "gelu"
  c.optimizer.learning_rate = 2e-3
  c.optimizer.warmup_steps = 20
  c.optimizer.weight_decay = 0.1
  c.data.num_workers = 0
  c.data.read_threads = 2
  c.data.in_memory = True  # a few MB, decoded once
  # the release's training transform; the world has no framing to vary
  c.data.augment = "center_crop"
  c.data.demo_num_train = 250  # the finite base set, one fixed negative per scene (CLIP-only pilot)
  c.data.demo_num_eval = 1200  # per benchmark subset: standard error <= 1.5 points
  c.data.demo_world = world()
  c.export_hf_dir = "hf"  # relative to the workdir
  return c.lock()
