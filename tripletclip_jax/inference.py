"""The open_clip-style inference API used by the evaluators and by users.

import tripletclip_jax as tc model = tc.load("runs/demo")     # a training workdir (latest
checkpoint) or a Hugging Face CLIP directory img = model.encode_images(images)                # PIL
images / uint8 HxWx3 arrays -> [N, D], L2-normalised txt = model.encode_texts(["a red circle left of
a blue square"])                  # -> [N, D]
"""

import sys

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from tripletclip_jax import checkpoint, fileio, sharding
from tripletclip_jax.data.image_ops import preprocess
from tripletclip_jax.data.tokenizer import tokenize
from tripletclip_jax.models import CLIP, CLIPConfig


class Model:
  """Batched, jit-compiled encoders over fixed parameters. Embeddings are float32 numpy.

  Without a mesh the inputs are whole batches on one host. With `mesh` (the trainer's, whose params
  are sharded over it) each batch is split over the mesh's batch axes, and on several processes each
  process passes only its own inputs and gets back only their embeddings (see `evaluate.multihost`);
  every process must then call the encoders the same number of times, which the encoders arrange by
  agreeing on the longest input.
  """

  def __init__(
    self, config: CLIPConfig, params, batch_size: int = 128, progress: bool | None = None, mesh=None
  ):
    if mesh is None and jax.process_count() > 1:
      raise ValueError(
        "A Model on several processes needs the mesh its parameters are sharded over."
      )
    self.config, self.params, self.batch_size, self.mesh = config, params, batch_size, mesh
    self.progress = sys.stderr.isatty() if progress is None else progress
    module = CLIP(config)
    out = {} if mesh is None else {"out_shardings": sharding.batch_sharding(mesh)}
    self._img = jax.jit(
      lambda p, x: module.apply({"params": p}, x, method=CLIP.encode_image), **out
    )
    self._txt = jax.jit(lambda p, t: module.apply({"params": p}, t, method=CLIP.encode_text), **out)

  @property
  def image_size(self) -> int:
    return self.config.vision.image_size

  @property
  def logit_scale(self) -> float:
    return float(np.exp(self.params["logit_scale"]))

  def _batched(self, fn, arrays: np.ndarray) -> np.ndarray:
    # Pad every chunk to one size so that a single compiled program serves every call.
    size, longest = self.batch_size, len(arrays)
    spec = None if self.mesh is None else sharding.batch_sharding(self.mesh).spec
    # This process's rows of each global batch; the longest input sets the calls.
    if self.mesh is not None:
      per_device = max(1, self.batch_size // sharding.num_batch_shards(self.mesh))
      size = per_device * sharding.num_batch_shards(self.mesh) // jax.process_count()
      if jax.process_count() > 1:
        longest = int(multihost_utils.process_allgather(np.int64(len(arrays))).max())
    out = []
    for i in tqdm(
      range(0, longest, size),
      disable=not self.progress or longest <= size,
      unit="batch",
      leave=False,
    ):
      chunk = arrays[i : i + size]
      n = len(chunk)
      if n < size:
        chunk = np.concatenate([chunk, np.zeros((size - n,) + arrays.shape[1:], arrays.dtype)])
      if self.mesh is None:
        out.append(np.asarray(fn(self.params, chunk))[:n])
      else:
        x = multihost_utils.host_local_array_to_global_array(chunk, self.mesh, spec)
        out.append(
          np.asarray(
            multihost_utils.global_array_to_host_local_array(fn(self.params, x), self.mesh, spec)
          )[:n]
        )
    return np.concatenate(out) if out else np.zeros((0, self.config.embed_dim), np.float32)

  def encode_images(self, images) -> np.ndarray:
    """PIL images, uint8 [H, W, 3] arrays or encoded bytes -> [N, D] L2-normalised float32."""
    return self._batched(self._img, preprocess(list(images), self.image_size))

  def encode_preprocessed(self, pixels: np.ndarray) -> np.ndarray:
    """Already normalised float32 [N, S, S, 3] -> [N, D]."""
    return self._batched(self._img, np.asarray(pixels, np.float32))

  def encode_texts(self, texts) -> np.ndarray:
    """Captions -> [N, D] L2-normalised float32."""
    return self.encode_token_ids(tokenize(list(texts), self.config.text.context_length))

  def encode_token_ids(self, ids: np.ndarray) -> np.ndarray:
    """int32 [N, L] CLIP token ids -> [N, D]."""
    return self._batched(self._txt, np.asarray(ids, np.int32))


def load(path: str, step: int | None = None, batch_size: int = 128) -> Model:
  """A training workdir (latest or `step` checkpoint) or a Hugging Face CLIP directory -> Model."""
  if not fileio.exists(path):
    raise FileNotFoundError(
      f"No model at {path!r}: pass a training workdir or a Hugging Face CLIP directory."
    )
  if fileio.exists(fileio.join(path, "config.json")):
    from tripletclip_jax.interop import hf

    config, params = hf.load_hf(path)
  else:
    config, params = checkpoint.load_params(path, step)
  return Model(config, params, batch_size)
