"""Losses by name. A loss is one module with its function, plus one `REGISTRY` line here.

Each entry says what the trainer needs to know: which hard negatives the batch must carry, which
parameters the loss owns outside the two towers (with their initial values), and the function.
`get(name)` is called once, where the experiment is built (`train/experiment.py`); everything below
it (the step, the FLOP count, the compute matching) is handed the `Loss` object (adding a loss:
docs/extending.md).
"""

import dataclasses
import math
from typing import Callable

import jax
from jax.sharding import PartitionSpec as P

from tripletclip_jax import sharding
from tripletclip_jax.losses import sigmoid, softmax

# CLIP's learnable log temperature, t = ln(1 / 0.07)
TEMPERATURE = (("logit_scale", math.log(1 / 0.07)),)


@dataclasses.dataclass(frozen=True)
class Loss:
  """A registered loss.

  fn(e, p, rows) -> this device's shares of (scalar loss, {metric: scalar}): `e` holds L2-normalised
  float32 embeddings 'img' and 'txt' [n, D] of this device's rows of the global batch, plus
  'neg_img' / 'neg_txt' [n, D] when the entry asks for them; `p` holds the loss's own parameters as
  stored (e.g. the log temperature); `rows` (`sharding.Rows`) says which rows these are, gathers
  every device's (`rows.gather`) and passes blocks round the ring (`rows.pass_on`). The shares of
  all devices sum to the loss and metrics; on one device `e` is the whole batch and the share is the
  value. The train step runs `fn` inside `jax.shard_map` and differentiates each device's share, so
  the gradient of a gathered embedding returns to its device as a reduce-scatter.
  """

  name: str
  fn: Callable
  neg_images: bool = False  # the batch carries x' and the loss encodes it
  neg_texts: bool = False  # the batch carries y'
  # batches mix (x, y) and (x', y') as ordinary pairs (a data change, not a formula)
  union: bool = False
  params: tuple = TEMPERATURE  # ((name, initial value), ...): scalar parameters outside the towers

  def __call__(self, e: dict, p: dict, mesh=None):
    """(loss, metrics) of the global batch `e` [N, D] (global arrays; on `mesh`, split over its
    batch axes)."""
    n = e["img"].shape[0]
    if mesh is None or sharding.num_batch_shards(mesh) == 1:
      return self.fn(e, p, sharding.Rows(n))
    rows = sharding.Rows(n, sharding.BATCH_AXES, sharding.num_batch_shards(mesh))

    def local(e, p):
      return jax.lax.psum(self.fn(e, p, rows), rows.axes)

    return jax.shard_map(local, mesh=mesh, in_specs=(P(rows.axes), P()), out_specs=P())(e, p)

  def with_init(self, **values) -> "Loss":
    """This loss with other initial values for its own parameters, e.g.
    `with_init(logit_scale=2.3)`: the one place a run's temperature starts from
    (`config.loss_init`). Unknown names raise ValueError."""
    unknown = sorted(set(values) - set(self.param_names))
    if unknown:
      raise ValueError(
        f"loss {self.name} has no parameter {unknown[0]!r}; its parameters are "
        f"{', '.join(self.param_names)}."
      )
    return dataclasses.replace(
      self, params=tuple((k, float(values.get(k, v))) for k, v in self.params)
    )

  @property
  def pairs_per_example(self) -> float:
    """Image-text pairs encoded per positive pair: (images + texts) / 2 (the compute-matching
    unit)."""
    return sum(self.encodes_per_example) / 2

  @property
  def encodes_per_example(self) -> tuple[int, int]:
    """(images, texts) encoded per positive pair, for FLOPs and compute matching."""
    return 1 + self.neg_images, 1 + self.neg_texts

  @property
  def batch_keys(self) -> tuple[str, ...]:
    return (
      ("image", "text")
      + (("neg_image",) if self.neg_images else ())
      + (("neg_text",) if self.neg_texts else ())
    )

  @property
  def param_names(self) -> tuple[str, ...]:
    return tuple(name for name, _ in self.params)


_ENTRIES = (
  Loss("clip", softmax.clip),
  # The clip loss over real and negative pairs as ordinary pairs (the release's "LaCLIP+HN"
  # control): it separates the effect of the extra data from that of the loss.
  Loss("clip_union", softmax.clip, union=True),
  Loss("negclip", softmax.negclip, neg_texts=True),
  Loss("negimage", softmax.negimage, neg_images=True),
  Loss("tripletclip", softmax.tripletclip, neg_images=True, neg_texts=True),
  Loss("siglip", sigmoid.siglip, params=sigmoid.PARAMS),
  Loss("negsiglip", sigmoid.negsiglip, neg_texts=True, params=sigmoid.PARAMS),
  Loss(
    "tripletsiglip", sigmoid.tripletsiglip, neg_images=True, neg_texts=True, params=sigmoid.PARAMS
  ),
)
REGISTRY = {loss.name: loss for loss in _ENTRIES}


def get(name: str) -> Loss:
  """The registry entry for `name`; ValueError naming the choices for an unknown one."""
  if name not in REGISTRY:
    raise ValueError(f"Unknown loss {name!r}; choose one of {', '.join(REGISTRY)}.")
  return REGISTRY[name]
