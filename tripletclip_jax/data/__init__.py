"""Records, the Grain input pipeline, image ops, the tokenizer and the demo world."""

from tripletclip_jax.data.tokenizer import Tokenizer, get_tokenizer, tokenize

__all__ = ["Tokenizer", "get_tokenizer", "tokenize"]
