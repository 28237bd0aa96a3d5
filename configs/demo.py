"""The embedded default: a tiny CLIP on the procedural demo world v4, no download.

  python launch/main.py --config configs/demo.py --workdir runs/demo
  python launch/main.py --config configs/demo.py:clip --workdir runs/demo_clip   # the compute-matched baseline
  python launch/main.py --config configs/demo.py:base --workdir runs/demo_base   # the single-object CLIP base
  python launch/reproduce.py --output_dir runs/study_v4 --seeds 0,1,2,3,4,5,6,7   # the pre-registered study

Generates the demo world (docs/demo_world.md) into WORKDIR/data if absent, drawn
from the run's seed, trains, evaluates the seen and held-out SugarCrepe-format
benchmarks and the held-out triplets, and exports a Hugging Face directory to
WORKDIR/hf. Baselines are compute-matched on image-text pairs encoded: a CLIP
run takes twice TripletCLIP's steps at the same batch.

The study (launch/reproduce.py) first trains the `:base` stage once per seed, a
CLIP on the world's single-object scenes, and starts every arm from it
(`init_from`); launch/main.py alone trains an arm from scratch. The parameters
were fixed on development seeds, with CLIP alone (docs/results/v4/).
"""

import ml_collections

from tripletclip_jax.train.config import base_config, source_config


def world():
  """The demo world's parameters (tripletclip_jax.demo.world.WorldConfig), fixed before the final
  seeds (docs/demo_world.md, "How the parameters were fixed")."""
  from tripletclip_jax.demo.scenes import TEXTURES, V4_COLORS, V4_SHAPES

  return ml_collections.ConfigDict(
    dict(
      # 8 x 8 colours x shapes, uniform, 4 textures always named: every value learnable, random
      # negatives still easy (<= 0.2 accidental hard negatives per image, measured)
      colors=V4_COLORS,
      shapes=V4_SHAPES,
      textures=TEXTURES,
      zipf=0.0,
      grid=3,
      jitter=2,
      min_objects=2,
      max_objects=3,
      max_named=3,
      relation_prob=0.4,
      size_word_prob=0.25,
      texture_word_prob=1.0,
      heldout_symbols=(0, 1),
      edit_weights=dict(
        swap_att=1.0, replace_att=1.0, replace_obj=1.0, swap_obj=1.0, replace_rel=1.0
      ),
      failed_negatives=0.2,
      negative_shift=True,
      image_size=48,
      object_radius=(0.36, 0.46),
      benchmark_replace="absent",
    )
  )


def get_config(arg: str = "tripletclip"):
  """`arg`: the loss of an arm, or "base" for the single-object CLIP base the study's arms start
  from."""
  c = base_config()
  c.loss = arg
  c.batch_size = 64
  c.total_steps = 500
  # baselines run more steps so that every loss encodes as many pairs
  c.compute_matched = True
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
  c.data.source = source_config(
    "demo",
    num_train=1000,  # the finite training set, one fixed negative per scene
    num_eval=2400,  # per benchmark subset: standard error <= 1 point
    num_base=4000,  # single-object scenes for the base
    world=world(),
  )
  c.export_hf_dir = "hf"  # relative to the workdir
  if arg == "base":
    # CLIP on the single-object scenes: learns every colour and shape, with no binding to learn.
    c.loss = "clip"
    c.compute_matched = False
    c.total_steps = 2000
    c.checkpoint_every_steps = 1000
    c.data.source.train_set = "base"
  return c.lock()
