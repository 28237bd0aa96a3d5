"""The demo world's renderer: a scene graph to pixels, with the domain shift that plays the
text-to-image model's look."""

import functools
import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from tripletclip_jax.demo.scenes import COLORS, SHAPES, SHIFT_BACKGROUNDS, SIZES, Obj, WorldConfig

# the benchmark format the world is written in


# Hues far apart at 48 px, and from every background below.
def _star(cx, cy, r):
  pts = []
  for k in range(10):
    a = -np.pi / 2 + k * np.pi / 5
    rr = r if k % 2 == 0 else r * 0.45
    pts.append((cx + rr * np.cos(a), cy + rr * np.sin(a)))
  return pts


def _shape_mask(shape: str, cx: float, cy: float, r: float, size: int) -> np.ndarray:
  """(size, size) bool: the silhouette of `shape` of radius r px centred at (cx, cy)."""
  m = Image.new("L", (size, size), 0)
  d = ImageDraw.Draw(m)
  box = lambda x, y, rr: (x - rr, y - rr, x + rr, y + rr)  # noqa: E731
  if shape == "circle":
    d.ellipse(box(cx, cy, r), fill=255)
  elif shape == "square":
    d.rectangle(box(cx, cy, r * 0.85), fill=255)
  elif shape == "triangle":
    d.polygon(
      [(cx, cy - r), (cx + r * 0.95, cy + r * 0.8), (cx - r * 0.95, cy + r * 0.8)], fill=255
    )
  elif shape == "star":
    d.polygon(_star(cx, cy, r), fill=255)
  elif shape == "diamond":
    d.polygon([(cx, cy - r), (cx + r * 0.75, cy), (cx, cy + r), (cx - r * 0.75, cy)], fill=255)
  elif shape == "cross":
    w = r * 0.35
    d.rectangle((cx - r, cy - w, cx + r, cy + w), fill=255)
    d.rectangle((cx - w, cy - r, cx + w, cy + r), fill=255)
  elif shape == "ring":
    d.ellipse(box(cx, cy, r), fill=255)
    d.ellipse(box(cx, cy, r * 0.5), fill=0)
  elif shape == "crescent":
    d.ellipse(box(cx, cy, r), fill=255)
    d.ellipse(box(cx + r * 0.55, cy - r * 0.15, r * 0.8), fill=0)
  elif shape == "heart":
    d.ellipse(box(cx - r * 0.45, cy - r * 0.3, r * 0.52), fill=255)
    d.ellipse(box(cx + r * 0.45, cy - r * 0.3, r * 0.52), fill=255)
    d.polygon(
      [(cx - r * 0.95, cy - r * 0.15), (cx + r * 0.95, cy - r * 0.15), (cx, cy + r)], fill=255
    )
  elif shape == "bar":
    d.rectangle((cx - r, cy - r * 0.5, cx + r, cy + r * 0.5), fill=255)
  elif shape == "semicircle":  # flat side down
    d.pieslice(box(cx, cy + r * 0.45, r), 180, 360, fill=255)
  elif shape == "arrow":  # points up
    d.polygon([(cx, cy - r), (cx + r * 0.85, cy), (cx - r * 0.85, cy)], fill=255)
    d.rectangle((cx - r * 0.3, cy, cx + r * 0.3, cy + r), fill=255)
  else:
    raise ValueError(f"Unknown shape {shape!r}; choose from {SHAPES}.")
  return np.asarray(m) >= 128


@functools.cache
def _texture_mask(texture: str, size: int) -> np.ndarray | None:
  """Where a texture shows its second tone, at the 2x drawing scale: 2 px stripes / 1 px spots every
  4 px of the final image."""
  yy, xx = np.mgrid[0:size, 0:size]
  if texture == "striped":
    return (yy // 4) % 2 == 1
  if texture == "checkered":
    return (yy // 4 + xx // 4) % 2 == 1
  if texture == "spotted":
    return ((xx % 8) - 3.5) ** 2 + ((yy % 8) - 3.5) ** 2 <= 4.5
  return None


def _second_tone(rgb) -> np.ndarray:
  rgb = np.asarray(rgb, np.float32)
  lum = rgb @ np.asarray([0.299, 0.587, 0.114], np.float32)
  return rgb * 0.45 if lum > 90 else rgb + (255 - rgb) * 0.55  # darker, or lighter for dark colours


def draw_shift(rng) -> dict:
  """The text-to-image model's domain for one x': another background, brightness and contrast, blur
  and sensor-like noise."""
  return {
    "background": SHIFT_BACKGROUNDS[int(rng.integers(len(SHIFT_BACKGROUNDS)))],
    "contrast": float(rng.uniform(0.8, 1.1)),
    "brightness": float(rng.uniform(-12, 12)),
    "blur": float(rng.uniform(0.3, 0.8)),
    "noise": 6.0,
    "noise_seed": int(rng.integers(2**31)),
  }


def render(cfg: WorldConfig, scene: list[Obj], shift: dict | None = None) -> Image.Image:
  """Scene -> RGB image (drawn at 2x, then box-downsampled); `shift` (from `draw_shift`) renders it
  in the text-to-image model's domain instead of the real images' one."""
  s = cfg.image_size * 2
  cell = s / cfg.grid
  img = np.empty((s, s, 3), np.float32)
  img[:] = shift["background"] if shift else cfg.background
  for o in scene:
    cx, cy = (o.col + 0.5) * cell + 2 * o.dx, (o.row + 0.5) * cell + 2 * o.dy
    radius = cfg.object_radius[SIZES.index(o.size)]
    mask = _shape_mask(o.shape, cx, cy, cell * radius, s)
    img[mask] = COLORS[o.color]
    tex = _texture_mask(o.texture, s)
    if tex is not None:
      img[mask & tex] = _second_tone(COLORS[o.color])
  img = img.reshape(s // 2, 2, s // 2, 2, 3).mean((1, 3))
  if shift:
    img = (img - 128.0) * shift["contrast"] + 128.0 + shift["brightness"]
    img = np.asarray(
      Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(shift["blur"])
      ),
      np.float32,
    )
    img += np.random.default_rng(shift["noise_seed"]).normal(0, shift["noise"], img.shape)
  return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8))


def png(img: Image.Image) -> bytes:
  buf = io.BytesIO()
  img.save(buf, format="PNG", compress_level=1)
  return buf.getvalue()
