"""Keyword counting: case-insensitive substring counts over page or panel text, through a word index.

The semantics of `query --keyword`: the score of a document is the number of non-overlapping,
case-insensitive occurrences of the query in its plain text (its strings joined as the model
saw them).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from comix_embed.common.errors import UsageError
from comix_embed.common.model.preprocess import join_text

_WORD = re.compile(r"\w+")


class Postings:
    """Which documents hold which words, and how often: a vocabulary and its posting lists.

    The vocabulary is one string (words joined by newlines, which no word holds): a query is
    found in every word at once by one regex pass, and `_word_start` gives each word's postings
    (document, count), documents ascending. Documents are numbered 0..docs-1 (store rows for an
    index on disk, positions in a list of texts in memory).
    """

    def __init__(
        self, vocab: str, word_start: np.ndarray, post_doc: np.ndarray, post_count: np.ndarray, docs: int
    ) -> None:
        self.vocab = vocab
        lengths = [len(w) for w in vocab.split("\n")] if vocab else []
        self.offsets = np.cumsum([0] + [n + 1 for n in lengths]) if vocab else np.zeros(1, np.int64)
        self.longest = max(lengths, default=0)
        self.word_start, self.post_doc, self.post_count, self.docs = word_start, post_doc, post_count, docs

    @cached_property
    def codes(self) -> dict[str, int]:
        """word -> its number: the index of terms a phrase's words are looked up in (made on the
        first phrase query, not for every part an index build makes and merges)."""
        return {w: i for i, w in enumerate(self.vocab.split("\n"))} if self.vocab else {}

    @classmethod
    def of_texts(cls, lower: list[str], docs: np.ndarray, total: int) -> Postings:
        """Postings of lower-cased texts, the i-th being document docs[i] of `total`."""
        import pandas as pd  # hash-based factorize: ~10x faster than a dict lookup per word

        n = max(total, 1)
        words: list[str] = []
        lengths = np.zeros(len(lower), dtype=np.int64)
        for i, text in enumerate(lower):
            found = _WORD.findall(text)
            lengths[i] = len(found)
            words.extend(found)
        codes, vocab = pd.factorize(pd.Series(words, dtype=object), sort=False)
        doc_of = np.repeat(np.asarray(docs, dtype=np.int64), lengths)
        keys, counts = np.unique(np.asarray(codes, dtype=np.int64) * n + doc_of, return_counts=True)
        word_start = np.searchsorted(keys // n, np.arange(len(vocab) + 1))
        return cls("\n".join(str(w) for w in vocab), word_start, keys % n, counts, total)

    @classmethod
    def merge(cls, parts: list[Postings], total: int) -> Postings:
        """One index of several over disjoint documents (a build's row batches)."""
        vocab = sorted({w for p in parts if p.vocab for w in p.vocab.split("\n")})
        code = {w: i for i, w in enumerate(vocab)}
        codes, docs, counts = [], [], []
        for p in parts:
            if not p.vocab:
                continue
            local = np.array([code[w] for w in p.vocab.split("\n")], dtype=np.int64)
            codes.append(np.repeat(local, np.diff(p.word_start)))
            docs.append(p.post_doc)
            counts.append(p.post_count)
        if not codes:
            return cls("", np.zeros(1, np.int64), np.empty(0, np.int64), np.empty(0, np.int64), total)
        all_codes, all_docs = np.concatenate(codes), np.concatenate(docs)
        order = np.lexsort((all_docs, all_codes))
        word_start = np.searchsorted(all_codes[order], np.arange(len(vocab) + 1))
        return cls("\n".join(vocab), word_start, all_docs[order], np.concatenate(counts)[order], total)

    def save(self, folder: Path) -> None:
        """Written into a new folder, each file fsynced (see layout.py)."""
        folder.mkdir()
        with open(folder / "vocab.txt", "w", encoding="utf-8") as fh:
            fh.write(self.vocab)
            fh.flush()
            os.fsync(fh.fileno())
        for name in ("word_start", "post_doc", "post_count"):
            with open(folder / f"{name}.npy", "wb") as fh:
                np.save(fh, getattr(self, name))
                fh.flush()
                os.fsync(fh.fileno())

    @classmethod
    def load(cls, folder: Path, total: int) -> Postings:
        """A saved index; its posting arrays memory-mapped (only a query's words are read)."""
        vocab = (folder / "vocab.txt").read_text(encoding="utf-8")
        start, doc, count = (
            np.load(folder / f"{n}.npy", mmap_mode="r") for n in ("word_start", "post_doc", "post_count")
        )
        return cls(vocab, start, doc, count, total)

    def word_docs(self, word: str, at_least: int = 1) -> np.ndarray:
        """The documents holding `word` as a whole word `at_least` times: one lookup in the index
        of terms, no scan."""
        code = self.codes.get(word)
        if code is None:
            return np.empty(0, dtype=np.int64)
        span = slice(int(self.word_start[code]), int(self.word_start[code + 1]))
        docs = np.asarray(self.post_doc[span], dtype=np.int64)
        keep = (docs < self.docs) & (np.asarray(self.post_count[span]) >= at_least)
        return docs[keep]

    def word_hits(self, q: str) -> tuple[np.ndarray, np.ndarray]:
        """(documents, occurrences there) of a lower-cased query of word characters only; a
        document may come more than once (once per word that holds the query)."""
        if len(q) > self.longest:  # no word holds it (a pasted 64 kB "word" costs nothing)
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        hits = np.fromiter((m.start() for m in re.finditer(re.escape(q), self.vocab)), dtype=np.int64)
        words, per_word = np.unique(np.searchsorted(self.offsets, hits, side="right") - 1, return_counts=True)
        starts = self.word_start[words]
        lens = self.word_start[words + 1] - starts
        postings = np.repeat(starts - (np.cumsum(lens) - lens), lens) + np.arange(lens.sum())
        weights = self.post_count[postings] * np.repeat(per_word, lens)
        docs = self.post_doc[postings]
        keep = docs < self.docs  # an index built after the reader's snapshot holds rows past it
        return docs[keep], weights[keep]


def count_matches(query: str, postings: list[Postings], texts: Callable[[np.ndarray], list[str]]) -> np.ndarray:
    """Occurrences of `query` (case-insensitive, non-overlapping) per document, summed over indexes
    of disjoint documents.

    An occurrence of a query made only of word characters lies inside one word of the text, so its
    count in a document is the sum, over the document's words w, of `w.count(query)` times the
    occurrences of w: the postings answer it without scanning text (a `str.count` over 100,000
    pages' text takes ~70 ms on its own). Other queries (spaces, punctuation) are counted in the
    lower-cased `texts` of the documents that hold every word part, and of those alone.
    """
    q = query.lower()
    if not q.strip():
        raise UsageError("--keyword: give a non-empty word")
    docs = postings[0].docs

    def word_counts(word: str) -> np.ndarray:  # one pass over the documents, however many indexes
        found = [p.word_hits(word) for p in postings]
        at, weights = np.concatenate([f[0] for f in found]), np.concatenate([f[1] for f in found])
        return np.bincount(at, weights=weights, minlength=docs).astype(np.int64)

    if _WORD.fullmatch(q):
        return word_counts(q)
    candidates = _candidates(q, postings, word_counts)
    out = np.zeros(docs, dtype=np.int64)
    for doc, text in zip(candidates, texts(candidates)):
        out[doc] = text.count(q)
    return out


# Whole words of a phrase looked up to narrow the documents that may hold it: the rarest this many.
MAX_TERMS = 16


def _candidates(q: str, postings: list[Postings], word_counts: Callable[[str], np.ndarray]) -> np.ndarray:
    """The documents that may hold the phrase `q` (word characters and others), at a bounded cost
    whatever its length: its words, deduplicated; those strictly inside it are whole words of any
    text that holds it, as many times as the phrase holds each (their posting counts say so), looked
    up exactly in the index of terms (the `MAX_TERMS` rarest); the first
    and the last may be part of a word (`ood mor` in "good morning") and are searched in the
    vocabulary, two scans at most."""
    words = _WORD.findall(q)  # strings, not match objects: a 64 kB query must not wake the collector
    if not words:
        return np.arange(postings[0].docs)
    opens, closes = _WORD.match(q) is None, _WORD.match(q[-1]) is None  # a non-word character first, last
    whole = Counter(words[1:-1])  # a word 5 times in the phrase: in 5 places in the text
    edges: set[str] = set()
    for word, bounded in (
        ((words[0], opens), (words[-1], closes)) if len(words) > 1 else ((words[0], opens and closes),)
    ):
        if bounded:
            whole[word] += 1
        else:
            edges.add(word)
    edges -= set(whole)
    found = [np.unique(np.concatenate([p.word_docs(w, n) for p in postings])) for w, n in whole.items()]
    found.sort(key=len)
    candidates: np.ndarray | None = None
    for docs in found[:MAX_TERMS]:
        candidates = docs if candidates is None else np.intersect1d(candidates, docs, assume_unique=True)
        if not len(candidates):
            return candidates
    for word in edges:
        docs = np.flatnonzero(word_counts(word))
        candidates = docs if candidates is None else np.intersect1d(candidates, docs, assume_unique=True)
    return candidates if candidates is not None else np.arange(postings[0].docs)


class TextIndex:
    """Keyword counts over a list of texts held in memory (document i: texts[i])."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.lower = [t.lower() for t in texts]
        self.postings = Postings.of_texts(self.lower, np.arange(len(texts)), len(texts))

    def __len__(self) -> int:
        return len(self.texts)

    def counts(self, query: str) -> np.ndarray:
        """Occurrences of `query` (case-insensitive, non-overlapping) in each text."""
        return count_matches(query, [self.postings], lambda docs: [self.lower[d] for d in docs])


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
