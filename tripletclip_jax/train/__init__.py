"""Train state, optimizer, sharded step."""

from tripletclip_jax.train.optim import make_optimizer, make_schedule
from tripletclip_jax.train.step import (
  TrainState,
  create_train_state,
  encode_batch,
  loss_and_grads,
  make_train_step,
)

__all__ = [
  "TrainState",
  "create_train_state",
  "encode_batch",
  "loss_and_grads",
  "make_optimizer",
  "make_schedule",
  "make_train_step",
]
