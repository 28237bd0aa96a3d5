"""Fine-tunes a pretrained Hugging Face CLIP with the TripletCLIP loss.

  python launch/main.py --config configs/finetune.py --workdir runs/ft \
      --config.init_from=hf:/models/clip-vit-base-patch32 \
      --config.data.train='/data/tripletdata/train-*.tfrecord'

The architecture (sizes, patch, activation) comes from the checkpoint's
config.json. Small learning rate, short warmup, a few thousand steps; expect
SugarCrepe to rise within the first 1-2k steps on TripletData.
"""

from tripletclip_jax.train.config import base_config


def get_config(loss: str = "tripletclip"):
  c = base_config()
  c.loss = loss
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
  return c.lock()
