"""Evaluators by type. An evaluator is one module with `evaluate(model, **options) -> {metric:
value}` and one `REGISTRY` line here; the trainer (`config.evals`) and `launch/eval.py` build and
run them the same way.

    evals = {"sugarcrepe": {"type": "sugarcrepe", "sugarcrepe_dir": "/data/sugarcrepe", "every_steps": 5000}}
    for ev in build(evals):
      print(ev.name, ev(model))

Metrics are percentages unless named otherwise (`n`, `skipped_*` are counts).
"""

import dataclasses
import inspect
import types
import typing
from typing import Callable, Protocol

import numpy as np

from tripletclip_jax import fileio
from tripletclip_jax.data import formats
from tripletclip_jax.evaluate import (
  hard_retrieval,
  retrieval,
  sugarcrepe,
  triplet,
  winoground,
  zeroshot,
)


class EncoderModel(Protocol):
  """What an evaluator may use of a model (`tripletclip_jax.inference.Model` is one).

  Embeddings are L2-normalised float32 numpy [N, D]. On several processes each process passes only
  its own slice of a benchmark and gets only its rows back (`evaluate.multihost`), and every process
  must make the same calls.
  """

  config: object  # a models.CLIPConfig: `config.text.context_length` is the token length

  @property
  def image_size(self) -> int: ...
  def encode_images(self, images) -> np.ndarray: ...  # PIL images / uint8 [H, W, 3] / bytes
  def encode_texts(self, texts) -> np.ndarray: ...  # strings
  def encode_preprocessed(self, pixels) -> np.ndarray: ...  # normalised float32 [N, S, S, 3]
  def encode_token_ids(self, ids) -> np.ndarray: ...  # int32 [N, context_length]


REGISTRY: dict[str, Callable] = {
  "sugarcrepe": sugarcrepe.evaluate,  # sugarcrepe_dir, image_dir
  "triplet": triplet.evaluate,  # pattern: held-out TripletData shards
  "winoground": winoground.evaluate,  # path, image_dir
  "zeroshot": zeroshot.evaluate,  # dataset, data_dir
  "retrieval": retrieval.evaluate,  # split_json, image_dir
  "hard_retrieval": hard_retrieval.evaluate,  # pattern: held-out TripletData, hard negatives in the gallery
}


@dataclasses.dataclass
class Evaluator:
  """One configured evaluator: `ev(model)` -> {metric: value}."""

  name: str
  type: str
  options: dict
  every_steps: int | None = None  # in training: run when step % every_steps == 0 (and at the end)

  def __call__(self, model: EncoderModel) -> dict:
    return REGISTRY[self.type](model, **self.options)

  def due(self, step: int, last: bool) -> bool:
    return last or bool(self.every_steps and step % self.every_steps == 0)


def _options(fn) -> tuple[list[str], list[str]]:
  """(required, optional) keyword names of an evaluate function after `model`."""
  params = list(inspect.signature(fn).parameters.values())[1:]
  return (
    [p.name for p in params if p.default is inspect.Parameter.empty],
    [p.name for p in params if p.default is not inspect.Parameter.empty],
  )


def required_options(kind: str) -> list[str]:
  """The options evaluator type `kind` cannot run without."""
  return _options(REGISTRY[kind])[0]


def option_types(kind: str) -> dict[str, tuple[type | None, object]]:
  """{option: (type, default)} of evaluator type `kind`, from its signature (type None: not
  declared), so that command-line values can be typed as the function declares them."""
  fn = REGISTRY[kind]
  hints = typing.get_type_hints(fn)
  out = {}
  for p in list(inspect.signature(fn).parameters.values())[1:]:
    hint = hints.get(p.name)
    # `str | None` -> str
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
      hint = next((a for a in typing.get_args(hint) if a is not type(None)), None)
    if hint is None and p.default is not inspect.Parameter.empty and p.default is not None:
      hint = type(p.default)
    out[p.name] = (
      hint if isinstance(hint, type) else None,
      None if p.default is inspect.Parameter.empty else p.default,
    )
  return out


def is_path_option(option: str) -> bool:
  """Options that name files or folders (`path`, `pattern`, `dataset`, `*_dir`, `*_json`): `build`
  checks that they exist, so a wrong path fails before training, not at the first evaluation."""
  return option in ("path", "pattern", "dataset") or option.endswith(("_dir", "_json"))


def _check_paths(name: str, options: dict) -> None:
  for k, v in options.items():
    if not is_path_option(k) or not isinstance(v, str) or v.startswith("tfds:"):
      continue
    if k == "pattern":
      try:
        formats.resolve(v)
      except (FileNotFoundError, ValueError) as e:
        raise FileNotFoundError(f"evals.{name}.{k}: {e}") from None
    elif not fileio.exists(v):
      raise FileNotFoundError(
        f"evals.{name}.{k}={v!r} does not exist: fix the path, or drop the entry."
      )


def build(evals, every_steps: int | None = None, log=print) -> list[Evaluator]:
  """{name: {type (default: name), every_steps, ...options}} -> Evaluators, checked before anything
  runs.

  An entry whose required option is unset (None) is skipped with one line: a config may declare a
  benchmark that a run does not have. Unknown types and options raise ValueError naming the entry
  and the choices; a file or folder option (`is_path_option`) that does not exist raises
  FileNotFoundError naming it.
  """
  out = []
  for name, spec in (evals or {}).items():
    spec = dict(spec)
    kind = spec.pop("type", name)
    every = spec.pop("every_steps", None) or every_steps
    if kind not in REGISTRY:
      raise ValueError(f"evals.{name}: unknown type {kind!r}; choose one of {', '.join(REGISTRY)}.")
    required, optional = _options(REGISTRY[kind])
    unknown = sorted(set(spec) - set(required) - set(optional))
    if unknown:
      raise ValueError(
        f"evals.{name}: {kind} takes no option {unknown[0]!r}; it takes "
        f"{', '.join(required + optional)}."
      )
    unset = [k for k in required if spec.get(k) is None]
    if unset:
      log(
        f"evals.{name}: {unset[0]} is not set; skipped (set --config.evals.{name}.{unset[0]}=PATH to run it)"
      )
      continue
    options = {k: v for k, v in spec.items() if v is not None}
    _check_paths(name, options)
    out.append(Evaluator(name, kind, options, every))
  return out


def run(
  model: EncoderModel, evaluators: list[Evaluator], step: int | None = None, last: bool = True
) -> dict:
  """{eval/NAME/METRIC: value} of the evaluators due at `step` (all of them when `last`)."""
  out = {}
  for ev in evaluators:
    if step is None or ev.due(step, last):
      out.update({f"eval/{ev.name}/{k}": v for k, v in ev(model).items()})
  return out
