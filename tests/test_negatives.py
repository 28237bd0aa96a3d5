"""The negatives tool end to end with tiny random models built and saved inside the tests."""

import io
import json
import os
import subprocess
import sys
import time

import pytest
from PIL import Image

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from tiny_models import clip_params  # noqa: E402
from tripletclip_jax.synth.tiny import make_tiny_llm, make_tiny_t2i
from tripletclip_jax.data import pipeline, records  # noqa: E402
from tripletclip_jax.synth import prompts  # noqa: E402
from tripletclip_jax.synth.run import Options, run  # noqa: E402
from tripletclip_jax.synth.validate import rejection, rule_negative  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAPTIONS = [
  "a dog sitting to the left of a cat",
  "two red apples on a wooden table",
  "a man riding a bike",
  "a blue car parked next to a tall tree",
  "a small white boat on a lake",
  "three birds above a roof",
  "a woman holding an open umbrella",
  "a black cat under a chair",
  "a girl reading a big book",
  "an old man walking a brown dog",
]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  d = tmp_path_factory.mktemp("models")
  return make_tiny_llm(str(d / "llm")), make_tiny_t2i(str(d / "t2i"))


def _inputs(d, n=20, bad=False):
  os.makedirs(d / "img", exist_ok=True)
  rows = []
  for i in range(n):
    Image.new("RGB", (40, 40), (10 * i % 255, 100, 200)).save(d / "img" / f"{i}.png")
    rows.append(
      json.dumps(
        {"key": f"k{i:03d}", "caption": CAPTIONS[i % len(CAPTIONS)], "image": f"img/{i}.png"}
      )
    )
  if bad:
    rows += [
      "{not json",
      json.dumps({"key": "nocap", "image": "img/0.png"}),
      json.dumps({"key": "noimg", "caption": "a cat", "image": "img/missing.png"}),
    ]
  path = d / "in.jsonl"
  path.write_text("\n".join(rows) + "\n")
  return str(path)


def _opts(models, inp, out, **kw):
  llm, t2i = models
  return Options(
    input=inp,
    output_dir=str(out),
    llm=llm,
    t2i=t2i,
    image_size=32,
    batch_size=4,
    image_batch_size=3,
    chunk_size=8,
    max_new_tokens=12,
    **kw,
  )


def test_prompt_holds_instruction_examples_and_caption(models):
  from transformers import AutoTokenizer

  tok = AutoTokenizer.from_pretrained(models[0])
  for t in (tok, type("Plain", (), {"chat_template": None})()):
    text = prompts.render(t, "a red bus near a green house")
    assert prompts.INSTRUCTION in text and "a red bus near a green house" in text
    for src, dst in prompts.EXAMPLES:
      assert src in text and dst in text


@pytest.mark.parametrize(
  "output,reason",
  [
    ("", "empty"),
    ("   ", "empty"),
    ("A dog left of a cat.", "identical"),
    ("a dog\nand also a cat on the left", "multi_line"),
    ("A dog sitting to the right of a cat on a sofa.", "prompt_echo"),
    ("dog", "length"),
    ("a " * 40 + "cat", "length"),
  ],
)
def test_each_validation_case_is_rejected_and_falls_back(output, reason):
  caption = "a dog left of a cat"
  assert rejection(caption, output) == reason
  text, kind = rule_negative(caption, key="k1")
  assert text != caption and kind in ("replace", "swap", "add_att")
  assert rule_negative(caption, key="k1") == (text, kind)  # deterministic per key
  assert rejection(caption, "a cat left of a dog") is None


def test_end_to_end_shards_feed_the_training_pipeline(models, tmp_path):
  out = tmp_path / "out"
  totals = run(_opts(models, _inputs(tmp_path, bad=True), out), log=lambda *_: None)
  assert totals["records"] == 20 and totals["input_skipped"] == 3
  assert totals["llm"] + totals["rule"] == 20
  shards = records.resolve_shards(str(out))
  assert len(shards) == 3 and os.path.exists(out / "manifest.json")
  rows = [records.decode_example(p) for s in shards for p in records.iter_records(s)]
  assert sorted(r["key"].decode() for r in rows) == [f"k{i:03d}" for i in range(20)]
  for r in rows:
    assert r["neg_source"] in (b"llm", b"rule") and r["neg_caption"] != r["caption"]
    assert Image.open(io.BytesIO(r["neg_image"])).size == (32, 32)
    if r["neg_source"] == b"rule":
      assert r["neg_type"] in (b"replace", b"swap", b"add_att")
  summary = json.load(open(shards[0] + ".summary.json"))
  assert summary["records"] == 8 and sum(summary["rejected_reasons"].values()) >= summary["rule"]
  batches = list(
    pipeline.make_dataset(str(out), batch_size=5, image_size=32, context_length=16, train=False)
  )
  assert sum(len(b["key"]) for b in batches) == 20


def test_same_seed_and_key_give_the_same_image(models):
  from tripletclip_jax.synth.models import Imager

  imager = Imager(models[1], size=32, seed=3)
  a = imager(["x1", "x2", "x3"], ["a red car", "a cat", "a tree"])
  b = imager(["x3", "x1"], ["a tree", "a red car"])
  assert a[0] == b[1] and a[2] == b[0]
  assert Imager(models[1], size=32, seed=4)(["x1"], ["a red car"])[0] != a[0]
  # the tool's path: batches rendered while the previous batch encodes, order kept
  assert imager.render_all(["x1", "x2", "x3"], ["a red car", "a cat", "a tree"], 2) == a


def test_published_architectures_build_and_generate_through_the_tool():
  """The benchmark's models: the published sizes (counted on the meta device, nothing allocated),
  and, divided by 16, a fixed number of new tokens and an image through Captioner and Imager."""
  import torch

  from tripletclip_jax.synth import archs
  from tripletclip_jax.synth.models import Captioner, Imager
  from tripletclip_jax.synth.tiny import tiny_tokenizer

  sizes = {n: archs.count_params(archs.llm(n, "meta", torch.float16)) for n in archs.LLMS}
  assert sizes == {"mistral-7b": 7_241_732_096, "phi-3-mini": 3_821_079_552}
  unet = archs.t2i(device="meta", dtype=torch.float16).unet
  assert archs.count_params(unet) == 2_567_463_684
  ids = torch.randint(300, 32000, (3, 10))
  for static in (False, True):
    cap = Captioner(
      archs.llm("phi-3-mini", shrink=16),
      tokenizer=tiny_tokenizer(),
      max_new_tokens=5,
      min_new_tokens=5,
      static_cache=static,
    )
    assert cap.generate_tokens(ids, torch.ones_like(ids)).shape == (3, 5)
  with pytest.raises(ValueError, match="tokenizer="):
    Captioner(cap.model)
  jpegs = Imager(archs.t2i(shrink=16), size=64).render_all(["a", "b"], ["a cat", "a dog"], 2)
  assert [Image.open(io.BytesIO(j)).size for j in jpegs] == [(64, 64)] * 2


def test_kill_and_rerun_gives_one_record_per_key(models, tmp_path):
  inp, out = _inputs(tmp_path, n=16), tmp_path / "out"
  cmd = [
    sys.executable,
    "launch/make_negatives.py",
    "--input",
    inp,
    "--output_dir",
    str(out),
    "--llm",
    models[0],
    "--t2i",
    models[1],
    "--image_size",
    "32",
    "--batch_size",
    "4",
    "--chunk_size",
    "8",
    "--max_new_tokens",
    "12",
  ]
  p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  first = out / records.shard_name("negatives", 0, 2)
  t = time.time()
  while not first.exists() and p.poll() is None and time.time() - t < 300:
    time.sleep(0.1)
  p.kill()
  p.wait()
  subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
  keys = [
    records.decode_example(r)["key"]
    for s in records.resolve_shards(str(out))
    for r in records.iter_records(s)
  ]
  assert sorted(keys) == sorted({k for k in keys}) and len(keys) == 16


def test_score_stage_and_filter(models, tmp_path):
  from tripletclip_jax.interop import hf
  from tripletclip_jax.models import get_preset

  clip_dir = str(tmp_path / "clip")
  hf.export_hf(get_preset("tiny"), clip_params(get_preset("tiny"), 0), clip_dir)
  out = tmp_path / "out"
  totals = run(
    _opts(
      models,
      _inputs(tmp_path, n=8),
      out,
      clip=clip_dir,
      stages=("captions", "images", "score"),
      keep_top=0.5,
    ),
    log=lambda *_: None,
  )
  assert totals["records"] == 4 and totals["filtered"] == 4
  rows = [
    records.decode_example(p)
    for s in records.resolve_shards(str(out))
    for p in records.iter_records(s)
  ]
  assert all(-1.0 <= r["clip_score"] <= 1.0 for r in rows)


def test_clear_errors(models, tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    run(_opts(models, str(tmp_path / "nope.jsonl"), tmp_path / "o"))
  with pytest.raises(ValueError, match="needs --clip"):
    run(
      _opts(models, _inputs(tmp_path, n=2), tmp_path / "o", stages=("captions", "images", "score"))
    )
  r = subprocess.run(
    [
      sys.executable,
      "launch/make_negatives.py",
      "--input",
      _inputs(tmp_path, n=2),
      "--output_dir",
      str(tmp_path / "o2"),
      "--llm",
      str(tmp_path / "missing_llm"),
      "--t2i",
      models[1],
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
  )
  assert r.returncode != 0 and "missing_llm" in r.stderr.strip().splitlines()[-1]


def test_csv_tsv_and_webdataset_inputs(tmp_path):
  import tarfile
  from tripletclip_jax.synth.inputs import read_inputs

  Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
  (tmp_path / "in.csv").write_text(
    'key,caption,image_path\nc1,"a red dot, small",a.png\nc2,,a.png\n'
  )
  (tmp_path / "in.tsv").write_text(
    "key\tcaption\tfilepath\nt1\ta red dot\ta.png\nt2\ta blue dot\tmissing.png\n"
  )
  with tarfile.open(tmp_path / "w.tar", "w") as tar:
    for name, data in (
      ("000.jpg", (tmp_path / "a.png").read_bytes()),
      ("000.txt", b"a red dot"),
      ("001.txt", b"caption without image"),
    ):
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  entries = read_inputs(f"{tmp_path}/in.csv,{tmp_path}/in.tsv,{tmp_path}/w.tar")
  items = [it for _, it in entries if isinstance(it, dict)]
  skipped = [(w, it) for w, it in entries if isinstance(it, str)]
  assert [i["key"] for i in items] == ["c1", "t1", "000"]
  assert (
    items[0]["caption"] == "a red dot, small"
    and items[0]["image"] == (tmp_path / "a.png").read_bytes()
  )
  assert [w for w, _ in skipped] == ["in.csv:3", "in.tsv:3", "w.tar:001"]


def test_exactly_once_survives_readability_changes_torn_chunks_and_leftover_files(models, tmp_path):
  inp, out = _inputs(tmp_path, n=20), tmp_path / "out"
  (tmp_path / "img" / "notes.png").write_text("not an image")
  # Valid JSON that is no object, and a file that is no image: skipped, counted.
  with open(inp, "a") as f:
    f.write(
      "[1, 2]\nnull\n"
      + json.dumps({"key": "txt", "caption": "a cat", "image": "img/notes.png"})
      + "\n"
    )
  # unreadable in the first run
  os.rename(tmp_path / "img" / "3.png", tmp_path / "img" / "3.hidden")
  log = []
  run(_opts(models, inp, out, num_shards=3, shard_index=0), log=log.append)  # chunk 0 of 3 only
  assert (
    json.load(open(out / (records.shard_name("negatives", 0, 3) + ".summary.json")))[
      "input_skipped"
    ]
    == 1
  )
  # readable again: moves no other key
  os.rename(tmp_path / "img" / "3.hidden", tmp_path / "img" / "3.png")
  with open(out / "captions" / "chunk-00001.jsonl", "w") as f:
    f.write('{"key": "k008", "neg_capt')  # a line torn by a kill
  stale = out / (records.shard_name("negatives", 1, 3) + ".tmp-99999")
  stale.write_bytes(b"half a shard")
  log.clear()
  totals = run(_opts(models, inp, out), log=log.append)
  assert not stale.exists() and any("removed" in line and ".tmp-99999" in line for line in log)
  assert totals["input_skipped"] == 3 and any("not a JSON object (list)" in line for line in log)
  assert any("notes.png is not a decodable image" in line for line in log)
  keys = [
    records.decode_example(r)["key"].decode()
    for s in records.resolve_shards(str(out))
    for r in records.iter_records(s)
  ]
  assert sorted(keys) == [
    f"k{i:03d}" for i in range(20) if i != 3
  ]  # k003 was unreadable when chunk 0 ran
  lines = (out / "captions" / "chunk-00001.jsonl").read_text().splitlines()
  assert all(json.loads(line)["key"] for line in lines) and len(lines) == 8
