"""tripletclip_jax: CLIP pretraining with synthetic hard negatives, in JAX."""

__version__ = "0.1.0"
