"""Image decoding and CLIP preprocessing on the host (PIL + NumPy).

Train: random resized crop (open_clip's defaults: scale (0.9, 1.0), ratio
(3/4, 4/3), bicubic). Eval: shortest side resized to `size` (bicubic), then a
center crop. Both normalise with OpenAI's mean and std and return float32
[size, size, 3]. JPEGs are decoded at reduced DCT scale when the crop allows
it (PIL's `draft`), which is most of the speed of this path.
"""

import io
import math

import numpy as np
from PIL import Image

from tripletclip_jax.models.config import PIXEL_OFFSET, PIXEL_SCALE


def decode(data: bytes, min_side: int | None = None) -> Image.Image:
  """Encoded JPEG/PNG -> RGB PIL image. With `min_side`, a JPEG may decode at 1/2, 1/4 or 1/8
  scale as long as its shorter side stays >= `min_side`."""
  return _load(Image.open(io.BytesIO(data)), min_side)


def _load(img: Image.Image, min_side: int | None) -> Image.Image:
  if min_side and img.format == "JPEG":
    w, h = img.size
    scale = max(min_side / min(w, h), 1 / 8)
    img.draft("RGB", (math.ceil(w * scale), math.ceil(h * scale)))
  return to_rgb(img)


def load_file(path: str) -> Image.Image:
  """An image file as 8-bit RGB; raises OSError (PIL's UnidentifiedImageError, truncation) if
  unreadable.

  The bytes come in one read (on a bucket one GET, not a metadata request and then a read)."""
  from tripletclip_jax import fileio

  with Image.open(io.BytesIO(fileio.read_bytes(path))) as im:
    im.load()
    return to_rgb(im)


def try_load(path: str) -> tuple[Image.Image | None, str | None]:
  """(RGB image, None), or (None, "missing" | "unreadable"): for evaluators, which skip and count
  bad images."""
  try:
    return load_file(path), None
  except FileNotFoundError:
    return None, "missing"
  except OSError:  # PIL's UnidentifiedImageError and truncated files are OSErrors
    return None, "unreadable"


# Evaluation images are small and many: on a bucket each costs a round trip, so they are read this
# many at a time (order kept). Local disks gain little from it and lose nothing.
LOAD_THREADS = 16


def map_threads(fn, items: list, threads: int = LOAD_THREADS) -> list:
  """[fn(x) for x in items], `threads` at a time, in order (an exception in fn is raised here)."""
  if len(items) <= 1 or threads <= 1:
    return [fn(x) for x in items]
  from concurrent.futures import ThreadPoolExecutor

  with ThreadPoolExecutor(min(threads, len(items)), thread_name_prefix="load-image") as pool:
    return list(pool.map(fn, items))


def try_load_all(
  paths: list[str], threads: int = LOAD_THREADS
) -> list[tuple[Image.Image | None, str | None]]:
  """`try_load` of every path, `threads` at a time, in the order given."""
  return map_threads(try_load, paths, threads)


def to_rgb(img: Image.Image) -> Image.Image:
  """Any PIL mode -> 8-bit RGB. 16-bit grayscale (PNG "I;16" / "I") is scaled from 0..65535: PIL's
  own convert clips it to 0..255, which turns almost every pixel white."""
  if img.mode.startswith("I;16") or img.mode == "I":
    a = np.asarray(img, np.float64) * (255.0 / 65535.0)
    return Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8), "L").convert("RGB")
  return img.convert("RGB")


def normalize(img: Image.Image) -> np.ndarray:
  """uint8 RGB -> (x / 255 - mean) / std as float32, in place: one temporary instead of three."""
  x = np.asarray(img, np.float32)
  x *= PIXEL_SCALE
  x += PIXEL_OFFSET
  return x


def random_resized_crop_box(
  w: int, h: int, rng: np.random.Generator, scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3)
) -> tuple[int, int, int, int]:
  """torchvision's RandomResizedCrop box sampling: (left, top, width, height)."""
  area = w * h
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
    if 0 < cw <= w and 0 < ch <= h:
      return int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1)), cw, ch
  # Fallback: the whole image, clipped to the ratio range, centred.
  in_ratio = w / h
  if in_ratio < ratio[0]:
    cw, ch = w, int(round(w / ratio[0]))
  elif in_ratio > ratio[1]:
    cw, ch = int(round(h * ratio[1])), h
  else:
    cw, ch = w, h
  return (w - cw) // 2, (h - ch) // 2, cw, ch


def _out(img: Image.Image, uint8: bool) -> np.ndarray:
  return np.asarray(img, np.uint8) if uint8 else normalize(img)


def train_transform(
  data: bytes, size: int, rng: np.random.Generator, scale=(0.9, 1.0), uint8: bool = False
) -> np.ndarray:
  """Encoded image -> random resized crop, normalised float32 [size, size, 3] (or its uint8
  pixels)."""
  img = Image.open(io.BytesIO(data))  # reads the header only
  w0, h0 = img.size
  left, top, cw, ch = random_resized_crop_box(w0, h0, rng, scale)
  # Decode only as finely as the crop needs: the crop must keep >= `size` pixels per side.
  img = _load(img, min_side=math.ceil(size * min(w0, h0) / min(cw, ch)))
  f = img.size[0] / w0
  box = (left * f, top * f, (left + cw) * f, (top + ch) * f)
  return _out(img.resize((size, size), Image.Resampling.BICUBIC, box=box), uint8)


def eval_transform(data: bytes, size: int, uint8: bool = False) -> np.ndarray:
  """Encoded image -> shortest side to `size` (bicubic), center crop, normalised float32 (or uint8
  pixels)."""
  img = decode(data, min_side=size)
  return _out(resize_center_crop(img, size), uint8)


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
  w, h = img.size
  s = size / min(w, h)
  nw, nh = max(size, round(w * s)), max(size, round(h * s))
  img = img.resize((nw, nh), Image.Resampling.BICUBIC)
  left, top = (nw - size) // 2, (nh - size) // 2
  return img.crop((left, top, left + size, top + size))


def preprocess(images, size: int) -> np.ndarray:
  """PIL images, uint8 HxWx3 arrays or encoded bytes -> eval-normalised float32 [N, size, size,
  3]."""
  out = []
  for im in images:
    if isinstance(im, (bytes, bytearray)):
      out.append(eval_transform(bytes(im), size))
      continue
    if isinstance(im, np.ndarray):
      im = Image.fromarray(np.asarray(im, np.uint8))
    out.append(normalize(resize_center_crop(to_rgb(im), size)))
  return np.stack(out) if out else np.zeros((0, size, size, 3), np.float32)
