"""Checks an LLM's negative caption, and the NegCLIP-style rule-based fallback."""

import re
import zlib

import numpy as np

from tripletclip_jax.synth.prompts import EXAMPLES, INSTRUCTION

MIN_LEN_RATIO, MAX_LEN_RATIO = 0.5, 2.0


def _norm(text: str) -> str:
  return re.sub(r"[^a-z0-9 ]", "", " ".join(text.lower().split()))


def clean_output(text: str) -> str:
  """Strips quotes, an 'Output:' label and surrounding whitespace."""
  text = text.strip()
  text = re.sub(r"^(output|new sentence|answer)\s*:\s*", "", text, flags=re.I)
  return text.strip().strip('"').strip("'").strip()


def rejection(caption: str, output: str) -> str | None:
  """Why `output` is not a usable negative of `caption` (None when it is)."""
  out = clean_output(output)
  if not out:
    return "empty"
  if len([line for line in out.splitlines() if line.strip()]) > 1:
    return "multi_line"
  if _norm(out) == _norm(caption):
    return "identical"
  prompt_bits = [INSTRUCTION[:40], "Input:", *(d for _, d in EXAMPLES), *(s for s, _ in EXAMPLES)]
  if any(_norm(b) and _norm(b) in _norm(out) for b in prompt_bits):
    return "prompt_echo"
  ratio = len(out.split()) / max(len(caption.split()), 1)
  if not MIN_LEN_RATIO <= ratio <= MAX_LEN_RATIO:
    return "length"
  return None


SWAPS = [
  ("left", "right"),
  ("above", "below"),
  ("on", "under"),
  ("inside", "outside"),
  ("front", "behind"),
  ("big", "small"),
  ("large", "small"),
  ("tall", "short"),
  ("old", "young"),
  ("open", "closed"),
  ("black", "white"),
  ("red", "blue"),
  ("green", "yellow"),
  ("day", "night"),
  ("man", "woman"),
  ("men", "women"),
  ("boy", "girl"),
  ("dog", "cat"),
  ("one", "two"),
  ("two", "three"),
  ("three", "four"),
  ("sitting", "standing"),
  ("up", "down"),
  ("before", "after"),
  ("empty", "full"),
  ("wet", "dry"),
]
REPLACE = {w: b for a, b in SWAPS for w in [a]} | {b: a for a, b in SWAPS}
COLORS = [
  "red",
  "blue",
  "green",
  "yellow",
  "black",
  "white",
  "brown",
  "pink",
  "orange",
  "purple",
  "gray",
]


def rule_negative(caption: str, key: str = "", seed: int = 0) -> tuple[str, str]:
  """A NegCLIP-style negative: (text, edit type), deterministic per key.

  Replaces a word by its opposite (relation, attribute, count, object), else
  swaps two content words, else inserts a colour.
  """
  rng = np.random.default_rng(zlib.crc32(f"{seed}:{key}:{caption}".encode()))
  words = caption.split()
  core = [re.sub(r"\W", "", w).lower() for w in words]
  hits = [i for i, w in enumerate(core) if w in REPLACE]
  if hits:
    i = int(rng.choice(hits))
    new = REPLACE[core[i]]
    words[i] = re.sub(re.escape(core[i]), new, words[i], flags=re.I)
    return " ".join(words), "replace"
  content = [i for i, w in enumerate(core) if len(w) > 3]
  if len(content) >= 2:
    i, j = sorted(rng.choice(content, 2, replace=False).tolist())
    if core[i] != core[j]:
      words[i], words[j] = words[j], words[i]
      return " ".join(words), "swap"
  nouns = [i for i, w in enumerate(core) if w.isalpha()]
  i = int(rng.choice(nouns)) if nouns else len(words)
  words.insert(i, str(rng.choice(COLORS)))
  return " ".join(words), "add_att"
