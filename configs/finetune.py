"""Fine-tunes a pretrained Hugging Face CLIP with the TripletCLIP loss (or any registered loss).

  python launch/main.py --config configs/finetune.py --workdir runs/ft \
      --config.init_from=hf:/models/clip-vit-base-patch32 \
      --config.data.train='/data/tripletdata/train-*.tfrecord'
  # freeze the lower half of both towers (ViT-B/32: 12 blocks each), a tenth of the rate for the rest of them:
  python launch/main.py --config configs/finetune.py:loss=tripletclip,freeze_blocks=6 ...
  # on the demo world, from `make demo`'s CLIP export and world:
  python launch/main.py --config configs/finetune.py:world=demo --workdir runs/ft_demo \
      --config.init_from=hf:runs/demo/runs/clip-seed0/hf --config.data.source.dir=runs/demo/data/seed0

The architecture (sizes, patch, activation) comes from the checkpoint's config.json. The pretrained
towers learn at `tower_lr` x the learning rate, the projections and temperature at the full rate
(new layers on top of pretrained ones move fastest). Expect SugarCrepe to rise within the first 1-2k
steps on TripletData.
"""

from tripletclip_jax.configlib import parse_arg, sibling_config

from tripletclip_jax.train.config import base_config


def get_config(arg: str = ""):
  opts = parse_arg(arg, loss="tripletclip", freeze_blocks="0", tower_lr="0.1", world="")
  if opts["world"] not in ("", "demo"):
    raise ValueError(
      f"world={opts['world']!r}: the only world is 'demo' (leave it out for your own data)"
    )
  if opts["world"] == "demo":
    c = sibling_config(__file__, "demo.py", opts["loss"])
    c.total_steps, c.compute_matched = 200, False
    c.optimizer.learning_rate = 2e-4
  else:
    c = base_config()
    c.loss = opts["loss"]
    c.batch_size = 256
    c.total_steps = 5000
    c.log_every_steps = 50
    c.checkpoint_every_steps = 1000
    c.eval_every_steps = 1000
    c.model.dtype = "bfloat16"
    c.optimizer.learning_rate = 1e-5
    c.optimizer.warmup_steps = 200
    c.optimizer.weight_decay = 0.1
    c.optimizer.grad_clip_norm = 1.0
  n = int(opts["freeze_blocks"])
  if n:  # blocks 0 .. n-1 of both towers, and the embeddings below them
    blocks = "|".join(str(i) for i in range(n))
    c.optimizer.frozen = (
      rf"(visual|text)/transformer/resblocks_({blocks})/.*|visual/(conv1|class_embedding|"
      rf"positional_embedding|ln_pre)/?.*|text/(token_embedding|positional_embedding)/?.*"
    )
  c.optimizer.lr_multipliers = (
    (
      r"(visual|text)/(transformer|conv1|class_embedding|positional_embedding|ln_pre|"
      r"token_embedding)/?.*",
      float(opts["tower_lr"]),
    ),
  )
  c.export_hf_dir = "hf"
  return c.lock()
