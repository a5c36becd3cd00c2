"""Keyword counting: case-insensitive substring counts over page or panel text, through a word index.

The semantics of `query --keyword`: the score of a document is the number of non-overlapping,
case-insensitive occurrences of the query in its plain text (its strings joined as the model
saw them).
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from comix_embed.common.errors import UsageError
from comix_embed.common.preprocess import join_text

_WORD = re.compile(r"\w+")


class TextIndex:
    """Case-insensitive substring counts over many documents, through an index of their words.

    An occurrence of a query made only of word characters lies inside one word of the text, so its
    count in a document is the sum, over the document's words w, of `w.count(query)` times the
    occurrences of w. The index answers such queries from the vocabulary and the postings, without
    scanning text (a single `str.count` over 100,000 pages' text takes ~70 ms on its own). Other
    queries (spaces, punctuation) count by scanning only the documents that hold every word part.
    """

    def __init__(self, texts: list[str]) -> None:
        import pandas as pd  # hash-based factorize: ~10x faster than a dict lookup per word

        self.texts = texts
        self.lower = [t.lower() for t in texts]
        n = max(len(texts), 1)
        words: list[str] = []
        lengths = np.zeros(len(texts), dtype=np.int64)
        for i, text in enumerate(self.lower):
            found = _WORD.findall(text)
            lengths[i] = len(found)
            words.extend(found)
        codes, vocab = pd.factorize(pd.Series(words, dtype=object), sort=False)
        docs = np.repeat(np.arange(len(texts), dtype=np.int64), lengths)
        keys, counts = np.unique(np.asarray(codes, dtype=np.int64) * n + docs, return_counts=True)
        self._post_doc = keys % n
        self._post_count = counts
        self._word_start = np.searchsorted(keys // n, np.arange(len(vocab) + 1))
        # the vocabulary as one string: a query is found in every word at once by one regex pass
        self._vocab_text = "\n".join(str(w) for w in vocab)
        self._vocab_offsets = np.cumsum([0] + [len(str(w)) + 1 for w in vocab])

    def __len__(self) -> int:
        return len(self.texts)

    def counts(self, query: str) -> np.ndarray:
        """Occurrences of `query` (case-insensitive, non-overlapping) in each document."""
        q = query.lower()
        if not q.strip():
            raise UsageError("--keyword: give a non-empty word")
        if _WORD.fullmatch(q):
            return self._word_counts(q)
        parts = _WORD.findall(q)
        candidates = np.arange(len(self))
        for part in parts:
            candidates = np.intersect1d(candidates, np.flatnonzero(self._word_counts(part)))
        out = np.zeros(len(self), dtype=np.int64)
        for doc in candidates:
            out[doc] = self.lower[doc].count(q)
        return out

    def _word_counts(self, q: str) -> np.ndarray:
        hits = np.fromiter((m.start() for m in re.finditer(re.escape(q), self._vocab_text)), dtype=np.int64)
        words, per_word = np.unique(np.searchsorted(self._vocab_offsets, hits, side="right") - 1, return_counts=True)
        starts = self._word_start[words]
        lens = self._word_start[words + 1] - starts
        postings = np.repeat(starts - (np.cumsum(lens) - lens), lens) + np.arange(lens.sum())
        weights = self._post_count[postings] * np.repeat(per_word, lens)
        return np.bincount(self._post_doc[postings], weights=weights, minlength=len(self)).astype(np.int64)


def plain_text(raw: Any) -> str:
    """A stored text JSON object -> its strings joined as the model saw them ('' when empty)."""
    if not raw:
        return ""
    try:
        return join_text(json.loads(raw))
    except (ValueError, AttributeError):
        return str(raw)


def snippet(text: str, keyword: str | None = None, width: int = 72) -> str:
    """The text on one line, cut to `width` around the first match of `keyword` if given."""
    text = " ".join(text.split())
    at = text.lower().find(keyword.lower()) if keyword else -1
    start = max(0, at - width // 3) if at > 0 else 0
    piece = text[start : start + width]
    return ("…" if start > 0 else "") + piece + ("…" if start + width < len(text) else "")
