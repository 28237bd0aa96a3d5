"""OpenAI CLIP's byte-level BPE tokenizer, with no torch dependency.

Ids are identical to open_clip's `SimpleTokenizer` (49,408 ids; sot 49406,
eot 49407, pad 0). The BPE merges are OpenAI's file, shipped in this package.
"""

import functools
import gzip
import html
import os

import ftfy
import numpy as np
import regex

BPE_PATH = os.path.join(os.path.dirname(__file__), "bpe_simple_vocab_16e6.txt.gz")
NUM_MERGES = 49152 - 256 - 2
SOT, EOT = "<start_of_text>", "<end_of_text>"
# their ids in this vocabulary (the last two), as in open_clip and transformers
SOT_ID, EOT_ID = (
  49406,
  49407,
)


@functools.lru_cache()
def bytes_to_unicode() -> dict[int, str]:
  """Reversible byte -> printable unicode map (avoids whitespace and control characters).

  Insertion order matters: it is the order of the first 256 vocabulary entries.
  """
  printable = [
    *range(ord("!"), ord("~") + 1),
    *range(ord("¡"), ord("¬") + 1),
    *range(ord("®"), ord("ÿ") + 1),
  ]
  out = {b: chr(b) for b in printable}
  others = [b for b in range(256) if b not in out]
  out.update({b: chr(256 + i) for i, b in enumerate(others)})
  return out


def clean(text: str) -> str:
  """ftfy, double html unescape, whitespace folding, lowercase (open_clip's 'lower')."""
  text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
  return " ".join(text.split()).lower()


class Tokenizer:
  """CLIP BPE. `tok(texts, context_length)` -> int32 [N, context_length]."""

  def __init__(self, bpe_path: str = BPE_PATH):
    with gzip.open(bpe_path, "rt", encoding="utf-8") as f:
      lines = f.read().split("\n")[1 : NUM_MERGES + 1]
    self.merges = [tuple(line.split()) for line in lines]
    units = list(bytes_to_unicode().values())
    vocab = units + [u + "</w>" for u in units] + ["".join(m) for m in self.merges] + [SOT, EOT]
    self.encoder = {t: i for i, t in enumerate(vocab)}
    self.ranks = {m: i for i, m in enumerate(self.merges)}
    self.sot_id, self.eot_id = self.encoder[SOT], self.encoder[EOT]
    assert (self.sot_id, self.eot_id) == (SOT_ID, EOT_ID), "the shipped vocabulary changed"
    self.vocab_size = len(vocab)
    self._byte_map = bytes_to_unicode()
    self._pattern = regex.compile(
      rf"{SOT}|{EOT}|'s|'t|'re|'ve|'m|'ll|'d|[\p{{L}}]+|[\p{{N}}]|[^\s\p{{L}}\p{{N}}]+",
      regex.IGNORECASE,
    )

  @functools.lru_cache(maxsize=1 << 16)
  def _bpe(self, token: str) -> tuple[str, ...]:
    if token in (SOT, EOT):
      return (token,)
    word = list(token[:-1]) + [token[-1] + "</w>"]
    while len(word) > 1:
      pairs = {(a, b) for a, b in zip(word, word[1:])}
      best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
      if best not in self.ranks:
        break
      merged, i = [], 0
      while i < len(word):
        if i < len(word) - 1 and (word[i], word[i + 1]) == best:
          merged.append(word[i] + word[i + 1])
          i += 2
        else:
          merged.append(word[i])
          i += 1
      word = merged
    return tuple(word)

  def encode(self, text: str) -> list[int]:
    """Token ids of `text` without sot/eot."""
    ids = []
    for piece in self._pattern.findall(clean(text)):
      unit = "".join(self._byte_map[b] for b in piece.encode("utf-8"))
      ids.extend(self.encoder[t] for t in self._bpe(unit))
    return ids

  def __call__(self, texts, context_length: int = 77) -> np.ndarray:
    if isinstance(texts, str):
      texts = [texts]
    out = np.zeros((len(texts), context_length), np.int32)
    for i, text in enumerate(texts):
      ids = [self.sot_id] + self.encode(text) + [self.eot_id]
      if len(ids) > context_length:  # truncate, keeping eot last so pooling still finds it
        ids = ids[:context_length]
        ids[-1] = self.eot_id
      out[i, : len(ids)] = ids
    return out


@functools.lru_cache()
def get_tokenizer() -> Tokenizer:
  return Tokenizer()


def tokenize(texts, context_length: int = 77) -> np.ndarray:
  """Captions -> int32 [N, context_length] CLIP token ids, zero padded."""
  return get_tokenizer()(texts, context_length)
