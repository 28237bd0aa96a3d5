"""On-disk formats of TripletData, by file suffix: a new format is one module plus one line in
`FORMATS`.

A format turns a list of its files into a random-access source whose items are `sources.SourceItem`s
(decoded tf.train.Example features, or the reason a record could not be read). The pipeline, the
trainer and the triplet evaluators take a pattern (a directory, a glob or a comma-separated list)
and open it here.
"""

import dataclasses
from typing import Callable

from tripletclip_jax import fileio
from tripletclip_jax.data import array_record, sources


@dataclasses.dataclass(frozen=True)
class Format:
  name: str
  suffix: str  # files of this format end with it
  open: Callable[[list], object]  # paths -> a random-access source of SourceItems


FORMATS = (
  Format("tfrecord", ".tfrecord", sources.ShardSource),  # ours: CRC-framed, with .idx sidecars
  # Grain's native format
  Format("array_record", array_record.SUFFIX, array_record.ArrayRecordSource),
)


def resolve(pattern: str) -> tuple[Format, list[str]]:
  """(format, sorted paths) of a directory, glob or comma-separated list; one format per pattern.

  FileNotFoundError in one line when nothing matches; ValueError for files of no or mixed formats.
  """
  paths = []
  for part in (p.strip() for p in pattern.split(",") if p.strip()):
    if fileio.isdir(part):
      found = sorted(p for f in FORMATS for p in fileio.glob(fileio.join(part, f"*{f.suffix}")))
    else:
      found = fileio.glob(part)
    if not found:
      raise FileNotFoundError(
        f"No TripletData files match {part!r}: check the path (a directory, a glob such as "
        f"data/train-*.tfrecord, or a comma-separated list; formats: "
        f"{', '.join(f.suffix for f in FORMATS)})."
      )
    paths.extend(found)
  kinds = {f.name: f for p in paths for f in FORMATS if p.endswith(f.suffix)}
  unknown = [p for p in paths if not any(p.endswith(f.suffix) for f in FORMATS)]
  if unknown:
    raise ValueError(
      f"{unknown[0]} is of no known TripletData format; files end with "
      f"{', '.join(f.suffix for f in FORMATS)}."
    )
  if len(kinds) > 1:
    raise ValueError(
      f"{pattern!r} mixes formats ({', '.join(sorted(kinds))}): point it at one of them."
    )
  return next(iter(kinds.values())), paths


def open_source(pattern: str):
  """A random-access source over every record that `pattern` names, in the format its files have."""
  fmt, paths = resolve(pattern)
  return fmt.open(paths)
