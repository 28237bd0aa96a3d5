"""The release's own run: 10 epochs over the released 1M-row TripletCLIP-High-Quality subset
(docs/recipe.md).

  python launch/convert_wds.py --input '/data/tripletclip_hq/*.tar' --output_dir /data/tripletclip_hq_tfr
  python launch/main.py --config configs/tripletclip_hq.py --workdir gs://BUCKET/runs/hq \
      --config.data.train='/data/tripletclip_hq_tfr/*.tfrecord'
  # The release's CLIP row: --config.loss=clip (equal steps); at equal compute add --config.compute_matched=true

Provenance: every value below is the released code's (sample_train.sh,
parse_args.py, main.py): ViT-B/32 from scratch at 224 px and 77 tokens, batch
1024 positive pairs, AdamW lr 5e-4, weight decay 0.5 on every parameter,
beta (0.9, 0.999), eps 1e-8, 1000 warmup steps then cosine, the evaluation
transform for training images, no clamp on the logit scale, and 10 epochs of
the 1M rows = 10M positive pairs = 9,766 steps. One deliberate difference:
parameters stay fp32 with bf16 compute (the release's --precision bf16 keeps
bf16 weights). Unverified here: the release's exact row count after its own
filtering; total_examples assumes 1,000,000.
"""

from tripletclip_jax.train.config import base_config


def get_config(loss: str = "tripletclip"):
  c = base_config()
  c.loss = loss
  c.total_examples = 10 * 1_000_000  # 10 epochs of the 1M-row subset -> 9,766 steps at batch 1024
  c.checkpoint_every_steps = 1000
  c.eval_every_steps = 2000
  c.model.act = "gelu"
  c.optimizer.decay_rule = "all"
  c.data.augment = "center_crop"
  c.clamp_logit_scale = False
  c.data.num_workers = 16
  return c.lock()
