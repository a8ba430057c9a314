"""A parameter-free caption tokenizer for the default model: hashed words.

Stable across processes (crc32, not Python's salted hash) so cached token ids and a served
model agree. Id 0 is padding; a row of zeros means "no text" (dropped for guidance).
"""

from __future__ import annotations

import re
import zlib

import torch
from torch import Tensor

_WORD = re.compile(r"[a-z0-9]+")


def tokenize(captions: list[str], vocab: int, length: int) -> Tensor:
    """(len(captions), length) int64 word ids in [1, vocab), zero-padded and truncated."""
    ids = torch.zeros(len(captions), length, dtype=torch.long)
    for row, caption in enumerate(captions):
        words = _WORD.findall(caption.lower())[:length]
        for col, word in enumerate(words):
            ids[row, col] = 1 + zlib.crc32(word.encode()) % (vocab - 1)
    return ids
