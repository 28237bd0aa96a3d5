"""LiT (Zhai et al., 2022): a pretrained image tower, locked; the text tower trained under any
registered loss.

  python launch/main.py --config configs/lit.py:loss=tripletclip --workdir runs/lit \
      --config.init_from=hf:/models/clip-vit-base-patch32 --config.data.train='/data/tripletdata/train-*.tfrecord'
  # on the demo world, from `make demo`'s CLIP export and world:
  python launch/main.py --config configs/lit.py:loss=tripletclip,world=demo --workdir runs/lit_demo \
      --config.init_from=hf:runs/demo/runs/clip-seed0/hf --config.data.source.dir=runs/demo/data/seed0

The image tower (every `visual/...` parameter) gets no update, no optimizer state and no backward
pass; the text tower starts from the checkpoint too (LiT's "Lu" setting) and, with the projections
and the temperature, is trained. With a locked image tower, a loss's negative images only change the
text side (their embeddings are fixed), so `negclip` and `tripletclip` are the informative choices.
"""

from tripletclip_jax.configlib import parse_arg, sibling_config


def get_config(arg: str = ""):
  opts = parse_arg(arg, loss="clip", world="")
  if opts["world"] not in ("", "demo"):
    raise ValueError(
      f"world={opts['world']!r}: the only world is 'demo' (leave it out for your own data)"
    )
  if opts["world"] == "demo":  # the demo world's data, evaluations and schedule
    c = sibling_config(__file__, "demo.py", opts["loss"])
    c.total_steps, c.compute_matched = 200, False
  else:
    c = sibling_config(__file__, "finetune.py", opts["loss"])
    # only the text tower learns: LiT's text tower takes a larger rate
    c.optimizer.learning_rate = 1e-4
  c.init_from = None  # required: --config.init_from=hf:PATH
  c.optimizer.frozen = r"visual/.*"
  c.export_hf_dir = "hf"
  return c.lock()
