"""Export to open_clip, checked with the real open_clip: the same embeddings, and back through our
import bit for bit. Then our evaluators against LAION's CLIP_benchmark on the export, on small data
built here."""

import json
import os

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

from tiny_models import clip_params, one_block  # noqa: E402
from tripletclip_jax.data import tokenize  # noqa: E402
from tripletclip_jax.inference import Model  # noqa: E402
from tripletclip_jax.interop import openclip  # noqa: E402
from tripletclip_jax.models import get_preset  # noqa: E402

TEXTS = ["a red circle left of a blue square", "two dogs on a sofa", "a photo of a cat"]


def _load_in_open_clip(cfg_path, weights):
  open_clip.add_model_config(cfg_path)
  name = os.path.basename(cfg_path).removesuffix(".json")
  model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=weights)
  return model.eval(), preprocess


@pytest.mark.parametrize("preset", ["tiny", "vit_b32"])
def test_export_loads_in_open_clip_with_our_embeddings_and_imports_back_bit_for_bit(
  preset, tmp_path
):
  # tiny: exact GELU, 4 heads of 32; vit_b32: QuickGELU, OpenAI's widths, heads and sizes, at one
  # block a tower (the layout of a block is the same at any depth; tiny has two).
  cfg = get_preset(preset) if preset == "tiny" else one_block(get_preset(preset))
  params = clip_params(cfg, 3)
  cfg_path, weights = openclip.export(cfg, params, str(tmp_path), name=f"tc-{preset}")
  model, _ = _load_in_open_clip(cfg_path, weights)
  s = cfg.vision.image_size
  pix = np.random.default_rng(0).normal(size=(2, s, s, 3)).astype(np.float32)
  ours = Model(cfg, params)
  with torch.no_grad():
    img = model.encode_image(torch.from_numpy(pix.transpose(0, 3, 1, 2)), normalize=True).numpy()
    ids = np.asarray(tokenize(TEXTS, cfg.text.context_length))
    txt = model.encode_text(torch.from_numpy(ids).long(), normalize=True).numpy()
  assert np.abs(ours.encode_preprocessed(pix) - img).max() <= 1e-5
  assert np.abs(ours.encode_texts(TEXTS) - txt).max() <= 1e-5
  assert float(model.logit_scale) == pytest.approx(float(params["logit_scale"]))

  got_cfg, got = openclip.load(cfg_path, weights)
  assert got_cfg == cfg.replace(dtype="float32", remat=False, attention_impl=None)
  (a, tree_a), (b, tree_b) = (jax.tree_util.tree_flatten_with_path(t) for t in (params, got))
  assert tree_a == tree_b  # the same parameter names
  for (path, x), (_, y) in zip(a, b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))
  assert (
    json.load(open(cfg_path))["vision_cfg"]["head_width"] == cfg.vision.width // cfg.vision.heads
  )


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
  """Small benchmarks on disk: an image folder (3 classes), a Karpathy split, the demo world's
  SugarCrepe files; and one random tiny CLIP, exported for open_clip and for transformers (what
  launch/eval.py loads)."""
  from PIL import Image

  from tripletclip_jax.demo import world
  from tripletclip_jax.interop import hf

  root = tmp_path_factory.mktemp("bench")
  rng = np.random.default_rng(0)
  colours = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}

  def image(c, size):  # a colour with noise, not square: the resize and the crop both matter
    a = np.clip(np.asarray(c) + rng.normal(0, 40, size=size + (3,)), 0, 255).astype(np.uint8)
    return Image.fromarray(a)

  for name, c in colours.items():
    os.makedirs(root / "zs" / name)
    for i in range(4):
      image(c, (70 + 3 * i, 90)).save(root / "zs" / name / f"{i}.png")
  entries = []
  for i, (name, c) in enumerate(list(colours.items()) * 2):
    image(c, (80, 64 + i)).save(root / f"{i}.png")
    # Every caption distinct: a duplicate would tie, and the two harnesses break ties differently
    # (docs).
    sentences = [
      {"raw": f"a {name} square, {i}"},
      {"raw": f"a photo that is mostly {name}, number {i}"},
    ]
    entries.append({"split": "test", "filename": f"{i}.png", "sentences": sentences})
  json.dump({"images": entries}, open(root / "karpathy.json", "w"))
  world.write_demo_data(str(root / "world"), num_train=8, num_eval=6, seed=0, num_shards=1)
  cfg = get_preset("tiny")
  params = clip_params(cfg, 5)
  openclip.export(cfg, params, str(root / "oc"))
  hf.export_hf(cfg, params, str(root / "hf"))
  return root


def _cb_model(bench):
  model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{bench / 'oc'}")
  return model.eval(), preprocess, open_clip.get_tokenizer(f"local-dir:{bench / 'oc'}")


def _ours(bench, tasks, *options):
  """launch/eval.py on the transformers export of the same model; its results.json."""
  import sys

  sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "launch")
  )
  import eval as eval_cli

  out = bench / f"ours_{tasks.replace(',', '_')}.json"
  eval_cli.main(["--model", str(bench / "hf"), "--tasks", tasks, "--output", str(out), *options])
  return json.load(open(out))


def test_zero_shot_and_retrieval_agree_with_clip_benchmark(bench):
  from clip_benchmark.datasets.builder import image_captions_collate_fn
  from clip_benchmark.metrics import zeroshot_classification, zeroshot_retrieval
  from torch.utils.data import DataLoader
  from torchvision.datasets import ImageFolder

  model, preprocess, tokenizer = _cb_model(bench)
  templates = [
    "a photo of a {c} thing.",
    "something {c}.",
  ]  # CLIP_benchmark's placeholder is {c}, ours {}
  folder = ImageFolder(str(bench / "zs"), transform=preprocess)
  # CLIP_benchmark's classifier and logits; its `accuracy` calls float() on a one-element array,
  # which numpy >= 2.4 refuses, so its top-1 is taken here from the same logits.
  weights = zeroshot_classification.zero_shot_classifier(
    model, tokenizer, folder.classes, templates, "cpu", amp=False
  )
  logits, target = zeroshot_classification.run_classification(
    model, weights, DataLoader(folder, batch_size=5), "cpu", amp=False
  )
  theirs = {"acc1": float((logits.argmax(1) == target).float().mean())}
  entries = json.load(open(bench / "karpathy.json"))["images"]
  pairs = [
    (preprocess(_rgb(bench / e["filename"])), [s["raw"] for s in e["sentences"]]) for e in entries
  ]
  loader = DataLoader(pairs, batch_size=4, collate_fn=image_captions_collate_fn)
  theirs_ret = zeroshot_retrieval.evaluate(
    model, loader, tokenizer, "cpu", amp=False, recall_k_list=[1, 2]
  )
  ours = _ours(
    bench,
    "zeroshot,retrieval",
    "--zeroshot",
    str(bench / "zs"),
    f"--config.evals.zeroshot.templates={[t.replace('{c}', '{}') for t in templates]!r}",
    "--retrieval_json",
    str(bench / "karpathy.json"),
    "--retrieval_image_dir",
    str(bench),
  )
  assert (
    ours["zeroshot"]["top1"] == pytest.approx(100 * theirs["acc1"]) and ours["zeroshot"]["n"] == 12
  )
  assert 0 < ours["zeroshot"]["top1"] < 100  # a random model: the comparison is not all-or-nothing
  # CLIP_benchmark's "text retrieval" is image -> text (our i2t); no two captions or images are
  # alike here.
  assert ours["retrieval"]["i2t_R@1"] == pytest.approx(100 * theirs_ret["text_retrieval_recall@1"])
  assert ours["retrieval"]["t2i_R@1"] == pytest.approx(100 * theirs_ret["image_retrieval_recall@1"])


def _rgb(path):
  from PIL import Image

  with Image.open(path) as im:
    return im.convert("RGB")


def test_sugarcrepe_agrees_with_clip_benchmark_and_its_cli_runs_on_the_export(bench, tmp_path):
  import subprocess
  import sys

  from clip_benchmark.datasets.builder import image_captions_collate_fn
  from clip_benchmark.datasets.sugar_crepe import SugarCrepe
  from clip_benchmark.metrics import image_caption_selection
  from torch.utils.data import DataLoader

  from tripletclip_jax.evaluate.sugarcrepe import SUBSETS

  model, preprocess, tokenizer = _cb_model(bench)
  sc = bench / "world" / "sugarcrepe"
  ours = _ours(bench, "sugarcrepe", "--sugarcrepe_dir", str(sc))["sugarcrepe"]
  for subset in SUBSETS:
    ds = SugarCrepe(str(sc / "images"), str(sc / f"{subset}.json"), transform=preprocess)
    loader = DataLoader(ds, batch_size=4, collate_fn=image_captions_collate_fn)
    theirs = image_caption_selection.evaluate(model, loader, tokenizer, "cpu", amp=False)
    assert ours[subset] == pytest.approx(100 * theirs["text_acc"]), subset
  # The README's command: CLIP_benchmark's own CLI on the open_clip export, offline (its files laid
  # out as it expects them: ROOT/val2017/ and ROOT/TASK.json).
  root = tmp_path / "sugar_crepe"
  root.mkdir()
  (root / "val2017").symlink_to(sc / "images")
  (root / "swap_att.json").symlink_to(sc / "swap_att.json")
  out = tmp_path / "cb.json"
  cli = os.path.join(os.path.dirname(sys.executable), "clip_benchmark")
  p = subprocess.run(
    [cli, "eval", "--model", f"local-dir:{bench / 'oc'}", "--pretrained", "none", "--dataset",
     "sugar_crepe/swap_att", "--dataset_root", str(root), "--task", "image_caption_selection", "--no_amp",
     "--num_workers", "0", "--batch_size", "4", "--output", str(out)],
    capture_output=True, text=True, timeout=300,
  )  # fmt: skip
  assert p.returncode == 0, p.stderr[-2000:]
  assert json.load(open(out))["metrics"]["text_acc"] * 100 == pytest.approx(ours["swap_att"])
