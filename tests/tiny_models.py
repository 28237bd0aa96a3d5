"""Tiny random CLIP parameters for the interop and trainer tests (the negatives tool's tiny models
are `tripletclip_jax.synth.tiny`)."""


def clip_params(cfg, seed: int = 0) -> dict:
  """Random parameters of a whole CLIP checkpoint for `cfg`: the towers plus the loss's temperature
  (host numpy)."""
  import jax
  from tripletclip_jax import losses
  from tripletclip_jax.models import init_params
  from tripletclip_jax.train.step import with_loss_params

  return jax.device_get(
    with_loss_params(init_params(cfg, jax.random.key(seed)), losses.get("clip"))
  )


def one_block(cfg):
  """`cfg` with one residual block a tower: XLA compiles a train step of it in about two thirds of
  the time of two blocks, and the step's code paths are the same (benchmarks/RESULTS.md)."""
  return cfg.with_layers(1)
