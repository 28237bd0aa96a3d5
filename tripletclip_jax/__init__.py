"""tripletclip_jax: CLIP pretraining with synthetic hard negatives, in JAX."""

__version__ = "0.1.0"


def load(path: str, step: int | None = None, batch_size: int = 128):
  """A training workdir or a Hugging Face CLIP directory -> Model with encode_images / encode_texts."""
  from tripletclip_jax.inference import load as _load
  return _load(path, step, batch_size)
