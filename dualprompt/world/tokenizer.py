"""A word-level tokenizer for the tiny CLIP, with the calling interface of open_clip's tokenizers.

Ids: 0 is padding, 1..V the world's words and punctuation in sorted order, then the start token and
last the end token. The end token has the largest id because open_clip's text tower pools the
feature at `argmax(token ids)` (its "argmax" pool type).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from dualprompt.world.vocab import vocabulary

PUNCTUATION: tuple[str, ...] = (".", ",")
DEFAULT_CONTEXT_LENGTH = 32
_WORD_PATTERN = re.compile(r"[a-z]+|[.,]")


class WorldTokenizer:
    """Maps lower-cased words of the world's vocabulary to ids; unknown words raise ValueError."""

    def __init__(self, words: Sequence[str], context_length: int = DEFAULT_CONTEXT_LENGTH) -> None:
        tokens = list(PUNCTUATION) + sorted(set(words))
        self.word_to_id: dict[str, int] = {token: i + 1 for i, token in enumerate(tokens)}
        self.pad_token_id = 0
        self.sot_token_id = len(tokens) + 1
        self.eot_token_id = len(tokens) + 2
        self.vocab_size = len(tokens) + 3
        self.context_length = context_length

    def encode(self, text: str) -> list[int]:
        """Word ids of `text`, without start and end tokens. Splits off "." and ","."""
        lowered = text.lower()
        leftover = _WORD_PATTERN.sub(" ", lowered).strip()
        if leftover:
            raise ValueError(
                f"Text {text!r} contains characters other than letters, '.', ',' and spaces "
                f"({leftover.split()[0]!r}); the tiny synthetic model only knows the world's vocabulary."
            )
        ids = []
        for word in _WORD_PATTERN.findall(lowered):
            if word not in self.word_to_id:
                raise ValueError(
                    f"Unknown word {word!r}: the tiny synthetic model only knows the world's "
                    f"vocabulary ({len(self.word_to_id)} words, see dualprompt.world.vocab)."
                )
            ids.append(self.word_to_id[word])
        return ids

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        """Tokenize one text or a list of texts.

        Returns:
            LongTensor [N, context_length]: start token, word ids, end token, zero padding.
        """
        if isinstance(texts, str):
            texts = [texts]
        length = self.context_length if context_length is None else context_length
        tokens = torch.zeros(len(texts), length, dtype=torch.long)  # [N, L], 0 = padding
        for row, text in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(text), self.eot_token_id]
            if len(ids) > length:
                raise ValueError(
                    f"Text {text!r} needs {len(ids)} tokens with start and end tokens, more than the "
                    f"context length {length}; shorten it or use a longer context."
                )
            tokens[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return tokens


def build_tokenizer(context_length: int = DEFAULT_CONTEXT_LENGTH) -> WorldTokenizer:
    """The tokenizer of the tiny synthetic CLIP (its vocabulary is the world's, fixed by vocab.py)."""
    return WorldTokenizer(vocabulary(), context_length)
