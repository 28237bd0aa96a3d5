"""tripletclip_jax: CLIP pretraining with synthetic hard negatives, in JAX."""

__version__ = "0.1.0"

# The package's layers, lowest first. A module may import from its own layer and the ones below it,
# never from a layer above (tests/test_layers.py checks every import, including those inside
# functions).
LAYERS = (
  ("configlib", "fileio", "sharding"),  # config files and overrides; storage; device placement
  ("models", "losses"),  # the towers; the losses and their registry
  ("data",),  # records, formats, the Grain pipeline, the tokenizer
  # Orbax state; Hugging Face / OpenAI weights; the negatives tool
  (
    "checkpoint",
    "interop",
    "synth",
  ),
  ("evaluate", "inference"),  # benchmarks over an encoder; the user-facing Model
  ("demo",),  # the demo world: writes data and names its benchmarks
  ("train",),  # build, the step, the loop
)


def load(path: str, step: int | None = None, batch_size: int = 128):
  """A training workdir or a Hugging Face CLIP directory -> Model with encode_images /
  encode_texts."""
  from tripletclip_jax.inference import load as _load

  return _load(path, step, batch_size)
