"""Orchestration: chunks, stages, resume and scale-out for the negatives tool.

The input is split into chunks of `chunk_size` input positions (lines, tar
samples, records) in input order, readable or not; chunk i goes to process
i % world_size and becomes shard NAME-i-of-n. The captions stage appends to
captions/chunk-i.jsonl as it goes; the images stage renders a chunk whose
captions are complete and writes its shard atomically, with a summary JSON.
A rerun skips finished shards and captioned keys, so every key ends up in
exactly one record, even if some input became readable (or unreadable) in
between: that moves no other key to another chunk.
"""

import dataclasses
import glob
import hashlib
import json
import os
import tempfile
import time

from tqdm import tqdm

from tripletclip_jax import fileio
from tripletclip_jax.data import records


@dataclasses.dataclass
class Options:
  input: str
  output_dir: str
  llm: str | None = None
  t2i: str | None = None
  clip: str | None = None
  stages: tuple[str, ...] = ("captions", "images")
  device: str = "cpu"
  batch_size: int = 8
  image_batch_size: int = 4
  chunk_size: int = 1000
  name: str = "negatives"
  seed: int = 0
  num_shards: int = 1
  shard_index: int = 0
  max_new_tokens: int = 64
  temperature: float = 0.7
  top_p: float = 0.95
  do_sample: bool = True
  retries: int = 2
  steps: int = 1
  guidance: float = 0.0
  image_size: int = 512
  min_score: float | None = None
  keep_top: float | None = None
  trust_remote_code: bool = False
  staging_dir: str | None = None  # local home of the captions stage when output_dir is a bucket


def process_share(opts: Options) -> tuple[int, int]:
  """(index, count) of this process: --num_shards/--shard_index, else torchrun / accelerate's
  RANK."""
  if opts.num_shards > 1:
    return opts.shard_index, opts.num_shards
  return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _read_jsonl(path: str) -> dict:
  """{key: record} of a captions chunk. A last line torn by a kill is cut off, so that appending
  starts on a fresh line; its key is simply generated again."""
  out = {}
  if not os.path.exists(path):
    return out
  with open(path, "rb+") as f:
    data = f.read()
    if data and not data.endswith(b"\n"):
      f.truncate(data.rfind(b"\n") + 1)
      data = data[: data.rfind(b"\n") + 1]
  for line in data.decode("utf-8", "replace").splitlines():
    try:
      rec = json.loads(line)
      out[rec["key"]] = rec
    except (json.JSONDecodeError, KeyError, TypeError):
      pass
  return out


def _remove_stale_tmp(shard_path: str, log) -> None:
  """Temporary files of a writer killed mid-shard. Only this process writes this shard, so any are
  stale."""
  for tmp in glob.glob(glob.escape(shard_path) + ".tmp-*") + glob.glob(
    glob.escape(shard_path + records.INDEX_SUFFIX) + ".tmp-*"
  ):
    os.remove(tmp)
    log(f"removed {tmp}, left by a killed run")


def staging_dir(opts: Options) -> str:
  """Where the captions stage appends: output_dir itself, or for a bucket (where nothing can be
  appended) a local folder that lasts across reruns (--staging_dir, default one per output_dir under
  the temp dir)."""
  if not fileio.is_remote(opts.output_dir):
    return opts.output_dir
  if opts.staging_dir:
    return opts.staging_dir
  tag = hashlib.sha1(opts.output_dir.rstrip("/").encode()).hexdigest()[:12]
  return os.path.join(tempfile.gettempdir(), "tripletclip_negatives", tag)


def _check_stages(opts: Options) -> None:
  unknown = set(opts.stages) - {"captions", "images", "score"}
  if unknown:
    raise ValueError(f"Unknown stage(s) {sorted(unknown)}; choose from captions, images, score.")
  if "captions" in opts.stages and not opts.llm:
    raise ValueError("The captions stage needs --llm MODEL_OR_DIR.")
  if "images" in opts.stages and not opts.t2i:
    raise ValueError("The images stage needs --t2i MODEL_OR_DIR.")
  if "score" in opts.stages and not opts.clip:
    raise ValueError("The score stage needs --clip MODEL_OR_DIR (a transformers CLIPModel).")


class _Models:
  """The stages' models, each loaded on first use and kept for the later chunks."""

  def __init__(self, opts: Options):
    self.opts, self._captioner, self._imager, self._scorer = opts, None, None, None

  def captioner(self):
    from tripletclip_jax.synth.models import Captioner

    o = self.opts
    self._captioner = self._captioner or Captioner(
      o.llm,
      o.device,
      o.max_new_tokens,
      o.do_sample,
      o.temperature,
      o.top_p,
      o.retries,
      o.seed,
      o.trust_remote_code,
    )
    return self._captioner

  def imager(self):
    from tripletclip_jax.synth.models import Imager

    o = self.opts
    self._imager = self._imager or Imager(
      o.t2i,
      o.device,
      o.steps,
      o.guidance,
      o.image_size,
      o.seed,
      trust_remote_code=o.trust_remote_code,
    )
    return self._imager

  def scorer(self):
    from tripletclip_jax.synth.models import Scorer

    self._scorer = self._scorer or Scorer(self.opts.clip, self.opts.device)
    return self._scorer


def _caption(models: _Models, opts: Options, i: int, missing: list, done: dict, path: str) -> None:
  """The captions stage for chunk i: appends each new negative caption to its JSONL as it comes."""
  captioner = models.captioner()
  with open(path, "a") as f, tqdm(total=len(missing), desc=f"captions {i}", unit="cap") as bar:
    for b in range(0, len(missing), opts.batch_size):
      for rec in captioner(missing[b : b + opts.batch_size]):
        f.write(json.dumps(rec) + "\n")
        done[rec["key"]] = rec
      f.flush()
      bar.update(len(missing[b : b + opts.batch_size]))


def _render(models: _Models, opts: Options, i: int, chunk: list, done: dict) -> list:
  """The images stage for chunk i: the encoded negative image of every item, in order."""
  with tqdm(total=len(chunk), desc=f"images {i}", unit="img") as bar:
    return models.imager().render_all(
      [it["key"] for it in chunk],
      [done[it["key"]]["neg_caption"] for it in chunk],
      opts.image_batch_size,
      bar.update,
    )


def _score(models: _Models, opts: Options, chunk: list, done: dict, neg_images: list) -> list:
  """The score stage: (s(x, y) + s(x', y')) / 2 of every item, in order."""
  scorer, scores = models.scorer(), []
  for b in range(0, len(chunk), opts.batch_size):
    part = chunk[b : b + opts.batch_size]
    scores += scorer(
      [it["image"] for it in part],
      [it["caption"] for it in part],
      neg_images[b : b + len(part)],
      [done[it["key"]]["neg_caption"] for it in part],
    ).tolist()
  return scores


def _write_chunk(opts, path, chunk, done, neg_images, scores, summary) -> None:
  """Writes chunk's TripletData shard (filtered on clip_score) and fills `summary`'s counts."""
  keep = _keep_mask(scores, len(chunk), opts.min_score, opts.keep_top)
  with records.ShardWriter(path) as w:
    for j, it in enumerate(chunk):
      rec = done[it["key"]]
      for r in rec.get("rejected", []):
        summary["rejected_reasons"][r] = summary["rejected_reasons"].get(r, 0) + 1
      if not keep[j]:
        summary["filtered"] += 1
        continue
      w.write(
        {
          "key": it["key"],
          "image": it["image"],
          "caption": it["caption"],
          "neg_image": neg_images[j],
          "neg_caption": rec["neg_caption"],
          "neg_source": rec["neg_source"],
          "neg_type": rec.get("neg_type"),
          "clip_score": None if scores is None else float(scores[j]),
          "source": os.path.basename(opts.input),
        }
      )
      summary[rec["neg_source"]] += 1
  summary["records"] = w.count


def run(opts: Options, log=print) -> dict:
  """Runs the stages over this process's chunks of the input, resuming what earlier runs finished;
  returns the counts (records, llm, rule, filtered, input_skipped)."""
  from tripletclip_jax.synth.inputs import read_inputs

  _check_stages(opts)
  entries = read_inputs(opts.input)
  skipped = [(where, why) for where, why in entries if isinstance(why, str)]
  for where, why in skipped[:20]:
    log(f"skipped input {where}: {why}")
  rank, world = process_share(opts)
  spans = [entries[i : i + opts.chunk_size] for i in range(0, len(entries), opts.chunk_size)]
  chunks = [[it for _, it in span if isinstance(it, dict)] for span in spans]
  mine = [i for i in range(len(chunks)) if i % world == rank]
  work = staging_dir(opts)
  os.makedirs(os.path.join(work, "captions"), exist_ok=True)
  shard = lambda i: fileio.join(opts.output_dir, records.shard_name(opts.name, i, len(chunks)))
  todo = [i for i in mine if not fileio.exists(shard(i))]
  # a bucket's shards are staged in a fresh folder each
  for i in todo if work == opts.output_dir else ():
    _remove_stale_tmp(shard(i), log)
  log(
    f"{len(entries)} inputs ({len(skipped)} skipped) in {len(chunks)} chunks; process {rank}/{world} has "
    f"{len(mine)}, {len(mine) - len(todo)} already done"
  )
  models = _Models(opts)
  totals = {"records": 0, "llm": 0, "rule": 0, "filtered": 0, "input_skipped": len(skipped)}
  for i in todo:
    chunk, cap_path = chunks[i], os.path.join(work, "captions", f"chunk-{i:05d}.jsonl")
    done = _read_jsonl(cap_path)
    missing = [it for it in chunk if it["key"] not in done]
    t0 = time.perf_counter()
    if missing and "captions" in opts.stages:
      _caption(models, opts, i, missing, done, cap_path)
      missing = []
    t_captions = time.perf_counter() - t0
    if "images" not in opts.stages:
      continue
    if missing:
      log(
        f"chunk {i}: {len(missing)} keys have no negative caption yet; run the captions stage first."
      )
      continue
    t1 = time.perf_counter()
    neg_images = _render(models, opts, i, chunk, done)
    t_images = time.perf_counter() - t1
    scores = _score(models, opts, chunk, done, neg_images) if "score" in opts.stages else None
    summary = {
      "chunk": i,
      "inputs": len(spans[i]),
      "input_skipped": len(spans[i]) - len(chunk),
      "records": 0,
      "llm": 0,
      "rule": 0,
      "filtered": 0,
      "rejected_reasons": {},
      "seconds": {"captions": round(t_captions, 2), "images": round(t_images, 2)},
    }
    _write_chunk(opts, shard(i), chunk, done, neg_images, scores, summary)
    fileio.write_bytes(shard(i) + ".summary.json", json.dumps(summary, indent=1).encode())
    for k in ("records", "llm", "rule", "filtered"):
      totals[k] += summary[k]
    log(
      f"wrote {shard(i)}: {summary['records']} records ({summary['rule']} rule fallbacks, "
      f"{summary['filtered']} filtered)"
    )
  _maybe_manifest(opts, [shard(i) for i in range(len(chunks))])
  return totals


def _keep_mask(scores, n: int, min_score, keep_top) -> list[bool]:
  """Filters on clip_score: a minimum, and/or the top fraction of this chunk (everything without
  scores)."""
  if scores is None:
    return [True] * n
  keep = [min_score is None or s >= min_score for s in scores]
  if keep_top is not None and scores:
    cut = sorted(scores, reverse=True)[max(int(round(keep_top * len(scores))) - 1, 0)]
    keep = [k and s >= cut for k, s in zip(keep, scores)]
  return keep


def _maybe_manifest(opts: Options, shards: list[str]) -> None:
  """Once every shard exists (all processes finished), the manifest describes the dataset."""
  if shards and all(fileio.exists(s) for s in shards):
    counts = [len(records.load_index(s)) for s in shards]
    records.write_manifest(
      opts.output_dir,
      opts.name,
      shards,
      counts,
      tool="launch/make_negatives.py",
      llm=opts.llm,
      t2i=opts.t2i,
      clip=opts.clip,
      stages=list(opts.stages),
      seed=opts.seed,
      steps=opts.steps,
      guidance=opts.guidance,
      image_size=opts.image_size,
    )
