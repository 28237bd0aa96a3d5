"""TripletCLIP on CC3M, the paper's recipe (design.md section 2; paper Table 10).

  python launch/main.py --config configs/cc3m.py --workdir gs://BUCKET/runs/cc3m \
      --config.data.train='gs://BUCKET/tripletdata/cc3m/train-*.tfrecord' \
      --config.eval.sugarcrepe_dir=/data/sugarcrepe --config.eval.sugarcrepe_image_dir=/data/coco/val2017
  # Baselines at equal compute: --config.loss=clip (or negclip) --config.compute_matched=true

ViT-B/32 from scratch, 1024 positive pairs per step (each step also encodes the
1024 negative images and captions), AdamW 5e-4, weight decay 0.5, beta
(0.9, 0.999), eps 1e-8, 1000 warmup steps then cosine, 90k steps, bf16.
Expected (paper, Table 2): SugarCrepe mean about 9 points above CLIP. Time:
88.7 GFLOPs per example x 1024 x 90k = 8.2 EFLOPs, about a day on a v4-32
at 40% MFU.
"""

from tripletclip_jax.train.config import base_config


def get_config(loss: str = "tripletclip"):
  c = base_config()
  c.loss = loss
  c.batch_size = 1024
  c.total_steps = 90_000
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2000
  c.eval_every_steps = 10_000
  c.model.preset = "vit_b32"
  c.model.dtype = "bfloat16"
  c.model.act = "gelu"  # from scratch; quick_gelu only matters for OpenAI weights
  c.optimizer.learning_rate = 5e-4
  c.optimizer.warmup_steps = 1000
  c.optimizer.weight_decay = 0.5
  c.optimizer.b1, c.optimizer.b2, c.optimizer.eps = 0.9, 0.999, 1e-8
  c.data.num_workers = 16
  return c.lock()
