"""Hugging Face interop against the real transformers (and open_clip for OpenAI state dicts)."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tripletclip_jax.data import tokenize  # noqa: E402
from tripletclip_jax.data.tokenizer import clean  # noqa: E402
from tripletclip_jax.inference import Model, load  # noqa: E402
from tripletclip_jax.interop import hf, openclip  # noqa: E402
from tripletclip_jax.models import get_preset  # noqa: E402
from tiny_models import clip_params  # noqa: E402

TEXTS = [
  "a red circle",
  "a photo of two large blue squares left of a green triangle and a small star",
  "x",
  "Tom &amp; Jerry's caf\u00e9!",
]


def _images(n=3, size=64, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, 256, (size + 7 * i, size, 3), dtype=np.uint8) for i in range(n)]


def _hf_embed(model_dir, texts, images):
  m = transformers.CLIPModel.from_pretrained(model_dir).eval()
  proc = transformers.CLIPProcessor.from_pretrained(model_dir)
  ctx = m.config.text_config.max_position_embeddings
  texts = [clean(t) for t in texts]  # HF skips ftfy and html unescaping: clean as open_clip does
  with torch.no_grad():
    enc = proc(
      text=texts, padding="max_length", max_length=ctx, truncation=True, return_tensors="pt"
    )
    t = m.get_text_features(input_ids=enc["input_ids"])
    i = m.get_image_features(pixel_values=proc(images=images, return_tensors="pt")["pixel_values"])
  norm = lambda x: torch.nn.functional.normalize(getattr(x, "pooler_output", x), dim=-1).numpy()
  return norm(t), norm(i), enc["input_ids"].numpy()


def test_export_parity_with_transformers(tmp_path):
  cfg = get_preset("tiny", act="quick_gelu")
  params = clip_params(cfg, 0)
  out = hf.export_hf(
    cfg,
    params,
    str(tmp_path / "hf"),
    train_config={"loss": "tripletclip"},
    eval_results={"sugarcrepe/mean": 61.5},
  )
  t, i, _ = _hf_embed(out, TEXTS, _images())
  ours = Model(cfg, params)
  assert np.abs(ours.encode_texts(TEXTS) - t).max() <= 1e-4
  assert np.abs(ours.encode_images(_images()) - i).max() <= 1e-4
  assert "61.50" in open(tmp_path / "hf" / "README.md").read()


def test_import_parity_non_default_shape(tmp_path):
  hf_cfg = transformers.CLIPConfig(
    projection_dim=48,
    text_config=dict(
      vocab_size=49408,
      hidden_size=96,
      intermediate_size=200,
      num_hidden_layers=3,
      num_attention_heads=4,
      max_position_embeddings=40,
      hidden_act="gelu",
      eos_token_id=49407,
      pad_token_id=49407,
    ),
    vision_config=dict(
      hidden_size=80,
      intermediate_size=160,
      num_hidden_layers=3,
      num_attention_heads=5,
      image_size=48,
      patch_size=16,
      hidden_act="gelu",
    ),
  )
  torch.manual_seed(0)
  model = transformers.CLIPModel(hf_cfg).eval()
  model.save_pretrained(tmp_path / "src")
  hf.write_tokenizer(str(tmp_path / "src"), 40)
  hf.write_preprocessor(str(tmp_path / "src"), 48)
  t, i, _ = _hf_embed(str(tmp_path / "src"), TEXTS, _images(size=48))
  ours = load(str(tmp_path / "src"))  # the user's code path
  assert (
    ours.config.act == "gelu"
    and ours.config.vision.patch_size == 16
    and ours.config.text.layers == 3
  )
  assert np.abs(ours.encode_texts(TEXTS) - t).max() <= 1e-4
  assert np.abs(ours.encode_images(_images(size=48)) - i).max() <= 1e-4


def test_round_trip_is_byte_identical(tmp_path):
  cfg = get_preset("tiny")
  params = clip_params(cfg, 1)
  hf.export_hf(cfg, params, str(tmp_path / "a"))
  cfg2, params2 = hf.load_hf(str(tmp_path / "a"))
  assert cfg2 == cfg
  hf.export_hf(cfg2, params2, str(tmp_path / "b"))
  assert (tmp_path / "a" / "model.safetensors").read_bytes() == (
    tmp_path / "b" / "model.safetensors"
  ).read_bytes()
  assert json.load(open(tmp_path / "a" / "config.json")) == json.load(
    open(tmp_path / "b" / "config.json")
  )


def test_exported_tokenizer_gives_our_ids(tmp_path):
  hf.write_tokenizer(str(tmp_path))
  proc_tok = transformers.CLIPTokenizer.from_pretrained(str(tmp_path))
  captions = [
    "a red circle left of a blue square",
    "two dogs playing in the snow",
    "A Cat, on a MAT.",
    "a photo of 3 large green triangles",
  ]
  for c in captions:
    ours = tokenize([c])[0]
    theirs = proc_tok(c)["input_ids"]
    assert list(ours[: len(theirs)]) == theirs and np.all(ours[len(theirs) :] == 0)


def test_openai_state_dict_import_matches_open_clip():
  open_clip = pytest.importorskip("open_clip")
  from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

  torch.manual_seed(0)
  m = CLIP(
    embed_dim=32,
    vision_cfg=CLIPVisionCfg(layers=2, width=64, head_width=32, patch_size=8, image_size=32),
    text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=2),
    quick_gelu=True,
  ).eval()
  cfg, params = openclip.from_state_dict(m.state_dict())
  # head count is not in the weights
  cfg = cfg.replace(vision=cfg.vision.__class__(**{**cfg.vision.__dict__, "heads": 2}))
  ours = Model(cfg, params)
  rng = np.random.default_rng(0)
  pix = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    ti = torch.nn.functional.normalize(
      m.encode_image(torch.from_numpy(pix.transpose(0, 3, 1, 2))), dim=-1
    ).numpy()
    tt = torch.nn.functional.normalize(m.encode_text(open_clip.tokenize(TEXTS)), dim=-1).numpy()
  assert np.abs(ours.encode_preprocessed(pix) - ti).max() <= 1e-4
  assert np.abs(ours.encode_texts(TEXTS) - tt).max() <= 1e-4


def test_mismatched_checkpoint_names_the_key(tmp_path):
  cfg = get_preset("tiny")
  params = clip_params(cfg, 0)
  state = hf.params_to_hf_state(cfg, params)
  bad = dict(state, **{"visual_projection.weight": state["visual_projection.weight"][:, :10]})
  with pytest.raises(ValueError, match="visual_projection.weight"):
    hf.params_from_hf_state(cfg, bad)
  del state["text_projection.weight"]
  with pytest.raises(KeyError, match="text_projection.weight"):
    hf.params_from_hf_state(cfg, state)


def test_damaged_hf_directories_are_one_line(tmp_path):
  cfg = get_preset("tiny")
  out = str(tmp_path / "hf")
  hf.export_hf(cfg, clip_params(cfg, 0), out)
  st = tmp_path / "hf" / "model.safetensors"
  st.write_bytes(st.read_bytes()[:1000])  # cut short
  with pytest.raises(
    ValueError, match=r"model.safetensors is not a readable safetensors file .*export it again"
  ):
    load(out)
  conf = json.loads((tmp_path / "hf" / "config.json").read_text())
  del conf["vision_config"]["patch_size"]
  (tmp_path / "hf" / "config.json").write_text(json.dumps(conf))
  with pytest.raises(ValueError, match=r"config.json lacks the key 'patch_size'"):
    load(out)
  (tmp_path / "hf" / "config.json").write_text('{"text_config": {,}')
  with pytest.raises(ValueError, match=r"config.json: malformed JSON at line 1, column 18"):
    load(out)
