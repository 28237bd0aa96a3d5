"""Our tokenizer gives exactly open_clip's ids."""

import numpy as np
import pytest

from tripletclip_jax.data import tokenize
from tripletclip_jax.data.tokenizer import get_tokenizer

CAPTIONS = [
  "a red circle left of a blue square",
  "A Photo of TWO dogs   playing in the snow!",
  "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00fcber stra\u00dfe",
  "Tom &amp; Jerry &lt;3 &#39;quotes&#39; &amp;amp; double",
  "emoji \U0001f600\U0001f431 and \u2764\ufe0f hearts",
  "\u4e2d\u6587\u5b57\u7b26 \u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8 \ud55c\uad6d\uc5b4",
  "mojibake: Ã©tÃ© â€œquotedâ€\x9d",
  "numbers 1234567 and punctuation ...!?;:--",
  "it's we've they'll I'd you're I'm don't",
  "",
  "   ",
  "tabs\tand\nnewlines\r\nhere",
  " ".join(["a very long caption that keeps going"] * 30),
  "<start_of_text> literal special tokens <end_of_text>",
]


def test_matches_open_clip_exactly():
  open_clip = pytest.importorskip("open_clip")
  for ctx in (77, 16):
    ref = open_clip.tokenize(CAPTIONS, context_length=ctx).numpy()
    got = tokenize(CAPTIONS, context_length=ctx)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, ref)


def test_vocabulary_and_truncation():
  tok = get_tokenizer()
  assert tok.vocab_size == 49408 and tok.sot_id == 49406 and tok.eot_id == 49407
  assert len(tok.merges) == 48894
  ids = tokenize([CAPTIONS[12]])[0]
  assert ids[0] == 49406 and ids[-1] == 49407 and np.all(ids != 0)
  ids = tokenize(["hi"])[0]
  assert list(ids[:3]) == [49406, tok.encoder["hi</w>"], 49407] and np.all(ids[3:] == 0)
