"""Losses by name. A loss is one module with its function, plus one `REGISTRY` line here.

Each entry says what the trainer needs to know: which hard negatives the batch must carry, which parameters
the loss owns outside the two towers (with their initial values), and the function. The trainer, the FLOP
count and the compute matching read only this table (adding a loss: docs/extending.md).
"""

import dataclasses
import math
from typing import Callable

from tripletclip_jax.losses import sigmoid, softmax

TEMPERATURE = (("logit_scale", math.log(1 / 0.07)),)  # CLIP's learnable log temperature, t = ln(1 / 0.07)


@dataclasses.dataclass(frozen=True)
class Loss:
  """A registered loss.

  fn(e, p, mesh) -> (scalar loss, {metric: scalar}): `e` holds L2-normalised float32 embeddings 'img' and
  'txt' [N, D] of the global batch, plus 'neg_img' / 'neg_txt' [N, D] when the entry asks for them; `p` holds
  the loss's own parameters as stored (e.g. the log temperature); `mesh` is the device mesh or None.
  """
  fn: Callable
  neg_images: bool = False  # the batch carries x' and the loss encodes it
  neg_texts: bool = False   # the batch carries y'
  union: bool = False       # batches mix (x, y) and (x', y') as ordinary pairs (a data change, not a formula)
  params: tuple = TEMPERATURE  # ((name, initial value), ...): scalar parameters outside the towers

  @property
  def encodes_per_example(self) -> tuple[int, int]:
    """(images, texts) encoded per positive pair, for FLOPs and compute matching."""
    return 1 + self.neg_images, 1 + self.neg_texts

  @property
  def batch_keys(self) -> tuple[str, ...]:
    return ("image", "text") + (("neg_image",) if self.neg_images else ()) + (("neg_text",) if self.neg_texts else ())

  @property
  def param_names(self) -> tuple[str, ...]:
    return tuple(name for name, _ in self.params)


REGISTRY = {
    "clip": Loss(softmax.clip),
    # The clip loss over real and negative pairs as ordinary pairs (the release's "LaCLIP+HN" control): it
    # separates the effect of the extra data from that of the loss.
    "clip_union": Loss(softmax.clip, union=True),
    "negclip": Loss(softmax.negclip, neg_texts=True),
    "negimage": Loss(softmax.negimage, neg_images=True),
    "tripletclip": Loss(softmax.tripletclip, neg_images=True, neg_texts=True),
    "siglip": Loss(sigmoid.siglip, params=sigmoid.PARAMS),
    "negsiglip": Loss(sigmoid.negsiglip, neg_texts=True, params=sigmoid.PARAMS),
    "tripletsiglip": Loss(sigmoid.tripletsiglip, neg_images=True, neg_texts=True, params=sigmoid.PARAMS),
}
LOSSES = tuple(REGISTRY)


def get(name: str) -> Loss:
  """The registry entry for `name`; ValueError naming the choices for an unknown one."""
  if name not in REGISTRY:
    raise ValueError(f"Unknown loss {name!r}; choose one of {', '.join(LOSSES)}.")
  return REGISTRY[name]


def compute(name: str, e: dict, p: dict, mesh=None):
  """(loss, metrics) of loss `name` on embeddings `e` with loss parameters `p` (see `Loss`)."""
  return get(name).fn(e, p, mesh)
