"""Evaluators on fixtures in the real file formats, with known answers, and parity with
transformers."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tripletclip_jax.data import records, tokenize
from tripletclip_jax.evaluate import retrieval, sugarcrepe, triplet, winoground, zeroshot
from tripletclip_jax.models.config import OPENAI_MEAN, OPENAI_STD

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLORS = {
  "red": (220, 30, 30),
  "green": (30, 200, 30),
  "blue": (30, 30, 220),
  "yellow": (230, 220, 20),
}


class ColorModel:
  """A model whose answers are known: an image is the one-hot of its colour, a text of its first
  colour word."""

  image_size = 32

  class config:  # noqa: N801 - mirrors Model.config
    class text:  # noqa: N801
      context_length = 16

  def _one_hot(self, name):
    v = np.zeros(len(COLORS), np.float32)
    if name is not None:
      v[list(COLORS).index(name)] = 1
    return v

  def _nearest(self, rgb):
    return min(COLORS, key=lambda c: np.sum((np.asarray(COLORS[c]) - rgb) ** 2))

  def encode_images(self, images):
    return np.stack(
      [
        self._one_hot(self._nearest(np.asarray(im, np.float32).reshape(-1, 3).mean(0)))
        for im in images
      ]
    )

  def encode_texts(self, texts):
    first = lambda t: next((w for w in t.lower().replace(".", " ").split() if w in COLORS), None)
    return np.stack([self._one_hot(first(t)) for t in texts])

  def encode_preprocessed(self, pixels):
    rgb = (pixels.reshape(len(pixels), -1, 3).mean(1) * OPENAI_STD + OPENAI_MEAN) * 255
    return np.stack([self._one_hot(self._nearest(c)) for c in rgb])

  def encode_token_ids(self, ids):
    word_ids = {c: tokenize([c])[0, 1] for c in COLORS}
    return np.stack(
      [
        self._one_hot(next((c for t in row for c, i in word_ids.items() if t == i), None))
        for row in ids
      ]
    )


def _save(img_dir, name, color, size=24):
  os.makedirs(img_dir, exist_ok=True)
  Image.new("RGB", (size, size), COLORS[color]).save(os.path.join(img_dir, name))


def _sugarcrepe(d):
  _save(f"{d}/images", "r.png", "red")
  entries = {
    "0": {
      "filename": "r.png",
      "caption": "a red square",
      "negative_caption": "a blue square",
    },  # right
    "4": {
      "filename": "r.png",
      "caption": "a blue thing",
      "negative_caption": "a red thing",
    },  # wrong
    "11": {"filename": "r.png", "caption": "a red ball", "negative_caption": "a red cube"},
  }  # tie: wrong
  for s in sugarcrepe.SUBSETS:
    json.dump(entries, open(f"{d}/{s}.json", "w"))


def test_sugarcrepe_gaps_and_ties(tmp_path):
  _sugarcrepe(str(tmp_path))
  out = sugarcrepe.evaluate(ColorModel(), str(tmp_path))
  assert all(out[s] == pytest.approx(100 / 3) for s in sugarcrepe.SUBSETS)
  assert out["mean"] == pytest.approx(100 / 3) and out["skipped_missing_images"] == 0
  assert out["skipped_unreadable_images"] == 0 and out["skipped_bad_entries"] == 0
  # A corrupt image and a null caption are skipped and counted in every subset; the rest still
  # scores.
  (tmp_path / "images" / "broken.png").write_bytes(b"not a png")
  for sub in sugarcrepe.SUBSETS:
    entries = json.load(open(tmp_path / f"{sub}.json"))
    entries["20"] = {
      "filename": "broken.png",
      "caption": "a red square",
      "negative_caption": "a blue square",
    }
    entries["21"] = {"filename": "r.png", "caption": None, "negative_caption": "a blue square"}
    json.dump(entries, open(tmp_path / f"{sub}.json", "w"))
  out = sugarcrepe.evaluate(ColorModel(), str(tmp_path))
  assert out["mean"] == pytest.approx(100 / 3)
  assert out["skipped_unreadable_images"] == 7 and out["skipped_bad_entries"] == 7
  (tmp_path / "add_att.json").write_text('{"0": {"filename": "r.png",\n "caption": oops}}')
  with pytest.raises(ValueError, match=r"add_att.json: malformed JSON at line 2"):
    sugarcrepe.evaluate(ColorModel(), str(tmp_path))
  os.remove(tmp_path / "swap_obj.json")
  with pytest.raises(FileNotFoundError, match="swap_obj.json"):
    sugarcrepe.evaluate(ColorModel(), str(tmp_path), subsets=("swap_obj",))


WINO = [
  ("red", "blue", "a red one", "a blue one"),  # text, image, group right
  ("red", "blue", "a blue one", "a red one"),  # all wrong
  ("red", "red", "a red one", "a blue one"),
]  # ties: all wrong


def test_winoground_jsonl_and_datasets_formats(tmp_path):
  rows = []
  for i, (c0, c1, t0, t1) in enumerate(WINO):
    _save(f"{tmp_path}/images", f"ex_{i}_img_0.png", c0)
    _save(f"{tmp_path}/images", f"ex_{i}_img_1.png", c1)
    rows.append(
      {
        "id": i,
        "image_0": f"ex_{i}_img_0",
        "image_1": f"ex_{i}_img_1",
        "caption_0": t0,
        "caption_1": t1,
      }
    )
  with open(tmp_path / "examples.jsonl", "w") as f:
    f.write("\n".join(json.dumps(r) for r in rows))
  want = {"text": 100 / 3, "image": 100 / 3, "group": 100 / 3, "n": 3, "skipped_bad_examples": 0}
  assert winoground.evaluate(ColorModel(), str(tmp_path / "examples.jsonl")) == pytest.approx(want)
  # One corrupt image and one null caption: both examples skipped and counted, the rest scored.
  (tmp_path / "images" / "broken.png").write_bytes(b"not a png")
  extra = [dict(rows[0], id=3, image_1="broken"), dict(rows[0], id=4, caption_0=None)]
  with open(tmp_path / "examples.jsonl", "w") as f:
    f.write("\n".join(json.dumps(r) for r in rows + extra))
  want_skip = dict(want, skipped_bad_examples=2)
  assert winoground.evaluate(ColorModel(), str(tmp_path / "examples.jsonl")) == pytest.approx(
    want_skip
  )
  with open(tmp_path / "bad.jsonl", "w") as f:
    f.write(json.dumps(rows[0]) + "\n{not json\n")
  with pytest.raises(ValueError, match="bad.jsonl: malformed JSON on line 2"):
    winoground.evaluate(ColorModel(), str(tmp_path / "bad.jsonl"))
  datasets = pytest.importorskip("datasets")
  img = lambda c: Image.new("RGB", (24, 24), COLORS[c])
  ds = datasets.Dataset.from_dict(
    {
      "id": [0, 1, 2],
      "image_0": [img(r[0]) for r in WINO],
      "image_1": [img(r[1]) for r in WINO],
      "caption_0": [r[2] for r in WINO],
      "caption_1": [r[3] for r in WINO],
    },
    features=datasets.Features(
      {
        "id": datasets.Value("int32"),
        "image_0": datasets.Image(),
        "image_1": datasets.Image(),
        "caption_0": datasets.Value("string"),
        "caption_1": datasets.Value("string"),
      }
    ),
  )
  ds.save_to_disk(str(tmp_path / "hf"))
  assert winoground.evaluate(ColorModel(), str(tmp_path / "hf")) == pytest.approx(want)
  ds.to_parquet(str(tmp_path / "pq" / "test-00000.parquet"))
  assert winoground.evaluate(ColorModel(), str(tmp_path / "pq")) == pytest.approx(want)


def test_zeroshot_image_folder(tmp_path):
  for c in ("red", "green", "blue"):
    for i in range(2):
      _save(f"{tmp_path}/{c}", f"{i}.png", c)
  _save(f"{tmp_path}/red", "mislabelled.png", "blue")
  (tmp_path / "green" / "broken.jpg").write_bytes(b"not a jpeg")
  out = zeroshot.evaluate(
    ColorModel(), str(tmp_path), templates=["a photo of a {}.", "a {} thing."]
  )
  assert out["top1"] == pytest.approx(600 / 7) and out["top5"] == 100.0
  assert out["n"] == 7 and out["skipped_unreadable_images"] == 1
  names, templates = zeroshot.imagenet_metadata()
  assert len(names) == 1000 and len(templates) == 80


def _karpathy(d):
  imgs = [
    ("r.png", "red", ["a red car", "a red bus"]),
    ("g.png", "green", ["a green tree", "a blue sky"]),
    ("b.png", "blue", ["a blue sea", "a blue whale"]),
  ]
  for name, c, _ in imgs:
    _save(f"{d}/val", name, c)
  entries = [
    {"filename": n, "filepath": "val", "split": "test", "sentences": [{"raw": s} for s in sents]}
    for n, _, sents in imgs
  ]
  entries += [
    {"filename": "t.png", "filepath": "train", "split": "train", "sentences": [{"raw": "a red x"}]},
    {"filename": "gone.png", "filepath": "val", "split": "test", "sentences": [{"raw": "a red y"}]},
    {"filename": "cut.png", "filepath": "val", "split": "test", "sentences": [{"raw": "a red z"}]},
  ]
  # exists, unreadable: skipped too
  open(f"{d}/val/cut.png", "wb").write(b"\x89PNG\r\n\x1a\n truncated")
  json.dump({"images": entries}, open(f"{d}/dataset_coco.json", "w"))


def test_retrieval_recall_with_known_ranks(tmp_path):
  _karpathy(str(tmp_path))
  out = retrieval.evaluate(ColorModel(), str(tmp_path / "dataset_coco.json"), str(tmp_path))
  assert out["i2t_R@1"] == pytest.approx(200 / 3) and out["i2t_R@5"] == 100.0
  assert out["t2i_R@1"] == pytest.approx(500 / 6) and out["t2i_R@5"] == 100.0
  assert out["n_images"] == 3 and out["skipped_missing_images"] == 2


def _png(c):
  buf = io.BytesIO()
  Image.new("RGB", (24, 24), COLORS[c]).save(buf, format="PNG")
  return buf.getvalue()


def test_triplet_scores_on_our_shards(tmp_path):
  rows = [
    ("red", "blue", "a red car", "a blue car"),  # group right
    ("red", "blue", "a blue car", "a red car"),  # all wrong
    ("green", "green", "a green car", "a yellow car"),
  ]  # images tie: text right, image wrong
  with records.ShardWriter(str(tmp_path / records.shard_name("held", 0, 1))) as w:
    for i, (x, xn, y, yn) in enumerate(rows):
      w.write(
        {"key": f"k{i}", "image": _png(x), "neg_image": _png(xn), "caption": y, "neg_caption": yn}
      )
  out = triplet.evaluate(ColorModel(), str(tmp_path), batch_size=2)
  assert out["text"] == pytest.approx(100 / 3) and out["image"] == pytest.approx(100 / 3)
  assert (
    out["group"] == pytest.approx(100 / 3) and out["n"] == 3 and out["skipped_bad_records"] == 0
  )


def test_eval_cli_matches_transformers_on_a_random_clip(tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from tripletclip_jax.interop import hf

  cfg = transformers.CLIPConfig(
    projection_dim=32,
    text_config=dict(
      hidden_size=64,
      intermediate_size=128,
      num_hidden_layers=2,
      num_attention_heads=2,
      max_position_embeddings=32,
      eos_token_id=49407,
    ),
    vision_config=dict(
      hidden_size=64,
      intermediate_size=128,
      num_hidden_layers=2,
      num_attention_heads=2,
      image_size=32,
      patch_size=8,
    ),
  )
  torch.manual_seed(0)
  model = transformers.CLIPModel(cfg).eval()
  model_dir = str(tmp_path / "clip")
  model.save_pretrained(model_dir)
  hf.write_tokenizer(model_dir, 32)
  hf.write_preprocessor(model_dir, 32)
  sc, kp = tmp_path / "sc", tmp_path / "kp"
  rng = np.random.default_rng(0)
  os.makedirs(sc / "images")
  entries = {}
  for i in range(12):  # random pictures so that the random model's answers vary
    Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(
      sc / "images" / f"{i}.png"
    )
    entries[str(3 * i)] = {
      "filename": f"{i}.png",
      "caption": f"a photo of {i} red cats",
      "negative_caption": f"a drawing of {i} blue dogs",
    }
  for s in sugarcrepe.SUBSETS:
    json.dump(entries, open(sc / f"{s}.json", "w"))
  _karpathy(str(kp))
  out = tmp_path / "res" / "results.json"
  subprocess.run(
    [
      sys.executable,
      "launch/eval.py",
      "--model",
      model_dir,
      "--tasks",
      "sugarcrepe,retrieval",
      "--sugarcrepe_dir",
      str(sc),
      "--retrieval_json",
      str(kp / "dataset_coco.json"),
      "--retrieval_image_dir",
      str(kp),
      "--output",
      str(out),
    ],
    cwd=ROOT,
    check=True,
    capture_output=True,
  )
  ours = json.load(open(out))
  assert os.path.exists(tmp_path / "res" / "results.md") and os.path.exists(
    tmp_path / "res" / "results_sugarcrepe.png"
  )

  proc = transformers.CLIPProcessor.from_pretrained(model_dir)

  def embed(images=None, texts=None):
    with torch.no_grad():
      if images is not None:
        f = model.get_image_features(
          pixel_values=proc(images=images, return_tensors="pt")["pixel_values"]
        )
      else:
        f = model.get_text_features(**proc(text=texts, padding=True, return_tensors="pt"))
    return torch.nn.functional.normalize(getattr(f, "pooler_output", f), dim=-1).numpy()

  vals = list(entries.values())
  img = embed(images=[Image.open(sc / "images" / e["filename"]).convert("RGB") for e in vals])
  pos, neg = (
    embed(texts=[e["caption"] for e in vals]),
    embed(texts=[e["negative_caption"] for e in vals]),
  )
  want = 100 * np.mean(np.sum(img * pos, 1) > np.sum(img * neg, 1))
  assert ours["sugarcrepe"]["mean"] == pytest.approx(want)
  images, captions, owner, _ = retrieval.load(str(kp / "dataset_coco.json"), str(kp))
  want = retrieval.recall(embed(images=images), embed(texts=captions), owner)
  for k, v in want.items():
    assert ours["retrieval"][k] == pytest.approx(v), k


def test_eval_refuses_an_unwritable_output_and_bad_options_in_one_line(tmp_path, capsys):
  """eval.py's refusals, in this process (a process each costs about 4 s of start-up): exit 2 and
  one line, before any model is loaded."""
  from test_trainer import launcher

  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  for args, said in (
    (
      [
        "--model",
        str(tmp_path / "no_model"),
        "--tasks",
        "sugarcrepe",
        "--sugarcrepe_dir",
        str(tmp_path),
        "--output",
        str(blocker / "results.json"),
      ],
      ["cannot write in"],
    ),
    (
      ["--model", "m", "--tasks", "hard_retrieval", "--option", "triplet.pattern=x"],
      ["Unknown config key 'evals.triplet.pattern'", "(tasks: hard_retrieval)"],
    ),
    (
      ["--model", "m", "--tasks", "triplet", "--config.evals.triplet.batch_size=sixteen"],
      ["config.evals.triplet.batch_size='sixteen': give an integer"],
    ),
  ):
    with pytest.raises(SystemExit) as e:
      launcher("eval").main(args)
    err = capsys.readouterr().err
    # argparse's usage, then the error on one line
    assert e.value.code == 2 and all(m in err.splitlines()[-1] for m in said), err


def test_eval_options_are_typed_as_the_evaluator_declares_them():
  """`--option triplet.batch_size=16` used to stay the string "16" (and crash at 4 * "16" in
  Grain)."""
  sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "launch")
  )
  from eval import evals_config
  from tripletclip_jax.configlib import apply_overrides

  c = evals_config(["triplet", "sugarcrepe"])
  apply_overrides(
    c,
    [
      "evals.triplet.batch_size=16",
      "evals.sugarcrepe.subsets=('swap_att', 'swap_obj')",
      "evals.sugarcrepe.image_dir=/data/coco",
    ],
  )
  assert c.evals.triplet.batch_size == 16 and c.evals.sugarcrepe.subsets == ("swap_att", "swap_obj")
  assert c.evals.sugarcrepe.image_dir == "/data/coco" and c.evals.triplet.pattern is None


def test_evaluator_configs_are_checked_before_anything_runs(tmp_path):
  from tripletclip_jax.evaluate import build

  with pytest.raises(
    ValueError, match=r"evals.x: unknown type 'sugarcrep'; choose one of sugarcrepe, "
  ):
    build({"x": {"type": "sugarcrep"}})
  with pytest.raises(
    ValueError,
    match=r"evals.x: sugarcrepe takes no option 'image_folder'; it takes "
    r"sugarcrepe_dir, image_dir",
  ):
    build({"x": {"type": "sugarcrepe", "sugarcrepe_dir": "d", "image_folder": "i"}})
  with pytest.raises(
    FileNotFoundError, match=r"evals.t.pattern: No TripletData files match '/no/such/dir'"
  ):
    build({"t": {"type": "triplet", "pattern": "/no/such/dir"}})
  with pytest.raises(
    FileNotFoundError, match=r"evals.s.sugarcrepe_dir='/no/such/dir' does not exist"
  ):
    build({"s": {"type": "sugarcrepe", "sugarcrepe_dir": "/no/such/dir"}})
  said = []
  shard = tmp_path / "t.tfrecord"
  shard.write_bytes(b"")
  evs = build(
    {
      "sugarcrepe": {"sugarcrepe_dir": None},
      "t": {"type": "triplet", "pattern": str(shard), "every_steps": 3},
    },
    every_steps=10,
    log=said.append,
  )
  assert [(e.name, e.type, e.every_steps) for e in evs] == [("t", "triplet", 3)]
  assert said == [
    "evals.sugarcrepe: sugarcrepe_dir is not set; skipped (set "
    "--config.evals.sugarcrepe.sugarcrepe_dir=PATH to run it)"
  ]
  assert [evs[0].due(s, s == 7) for s in (3, 4, 6, 7)] == [True, False, True, True]


def test_a_built_wheel_carries_its_data_files_and_runs_zero_shot(tmp_path):
  """The package as `pip install .` ships it (not the source tree): the BPE vocabulary and ImageNet
  names."""
  import shutil

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  src = tmp_path / "src"  # a copy: setuptools stages the build in the source tree's build/
  shutil.copytree(
    os.path.join(root, "tripletclip_jax"),
    src / "tripletclip_jax",
    ignore=shutil.ignore_patterns("__pycache__"),
  )
  shutil.copy(os.path.join(root, "setup.py"), src / "setup.py")
  pip = [sys.executable, "-m", "pip", "-q"]
  subprocess.run(
    pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "wheel"), str(src)],
    check=True,
    capture_output=True,
    cwd=tmp_path,
  )
  (wheel,) = (tmp_path / "wheel").glob("tripletclip_jax-*.whl")
  subprocess.run(
    pip + ["install", "--no-deps", "--target", str(tmp_path / "site"), str(wheel)],
    check=True,
    capture_output=True,
  )
  for c in ("red", "blue"):
    _save(f"{tmp_path}/classes/{c}", "0.png", c)
  code = (
    "import jax, tripletclip_jax as tc; from tripletclip_jax.evaluate import zeroshot; "
    "from tripletclip_jax.inference import Model; from tripletclip_jax.models import get_preset, init_params; "
    "assert tc.__file__.startswith(%r), tc.__file__; cfg = get_preset('tiny'); "
    "m = Model(cfg, init_params(cfg, jax.random.key(0))); "
    "print(zeroshot.evaluate(m, %r, templates=['a photo of a {}.'])['n'], len(zeroshot.imagenet_metadata()[0]))"
    % (str(tmp_path / "site"), str(tmp_path / "classes"))
  )
  r = subprocess.run(
    [sys.executable, "-c", code],
    cwd=tmp_path,
    capture_output=True,
    text=True,
    timeout=300,
    env=dict(os.environ, PYTHONPATH=str(tmp_path / "site")),
  )
  assert r.returncode == 0, r.stderr[-2000:]
  assert r.stdout.split() == ["2", "1000"]


def test_hard_retrieval_puts_the_negatives_in_the_gallery(tmp_path):
  rows = [
    ("red", "blue", "a red car", "a blue car"),  # both ways right
    ("green", "red", "a green car", "a red bus"),  # both ways right
    ("yellow", "blue", "a blue boat", "a yellow boat"),
  ]  # x finds its own hard negative caption first
  with records.ShardWriter(str(tmp_path / records.shard_name("held", 0, 1))) as w:
    for i, (x, xn, y, yn) in enumerate(rows):
      w.write(
        {"key": f"k{i}", "image": _png(x), "neg_image": _png(xn), "caption": y, "neg_caption": yn}
      )
  from tripletclip_jax.evaluate import build

  (ev,) = build({"hard": {"type": "hard_retrieval", "pattern": str(tmp_path)}})
  out = ev(ColorModel())
  assert out["i2t_R@1"] == pytest.approx(200 / 3) and out["i2t_hardneg_top1"] == pytest.approx(
    100 / 3
  )
  # "a blue boat" ranks x'_0 (blue) first: wrong, but not its own hard negative.
  assert (
    out["t2i_R@1"] == pytest.approx(200 / 3) and out["t2i_hardneg_top1"] == 0.0 and out["n"] == 3
  )
