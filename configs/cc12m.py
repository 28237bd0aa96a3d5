"""TripletCLIP on CC12M: the CC3M recipe (configs/cc3m.py, docs/recipe.md) for 230k steps.

  python launch/main.py --config configs/cc12m.py --workdir gs://BUCKET/runs/cc12m \
      --config.data.train='gs://BUCKET/tripletdata/cc12m/train-*.tfrecord'

Provenance: every value but the length is cc3m's, with the same sources. The
230k steps are not checked against the paper's body, which was not available
here. Expected (paper summary): SugarCrepe about 9 points above CLIP at equal
compute; about 2.5x the CC3M run's time.
"""

from tripletclip_jax.configlib import sibling_config


def get_config(loss: str = "tripletclip"):
  c = sibling_config(__file__, "cc3m.py", loss)
  c.total_steps = 230_000
  return c.lock()
