"""Computing a map: landmark pages laid out by t-SNE, every other page placed among its nearest landmarks.

Landmarks are up to LANDMARKS embedded pages drawn at random with a fixed seed. t-SNE (init from
PCA, fixed random state) lays them out in 2-D: a non-linear layout that keeps neighbourhoods, so
series and styles form islands. Every other page goes where its NEIGHBOURS nearest landmarks by
cosine (faiss, exact inner product over the landmarks) are, weighted by how near each one is. The
cost of placing is linear in the pages (a flat search against a few thousand vectors), and a page
placed once never moves: the landmarks and their positions are kept (see build.py).
"""

from __future__ import annotations

import faiss
import numpy as np
from sklearn.manifold import TSNE

LANDMARKS = 4096
NEIGHBOURS = 8
SEED = 0
# t-SNE's usual perplexity; a small store's is clipped to a third of its landmarks (t-SNE needs perplexity < n).
PERPLEXITY = 30.0
# Fewer landmarks than this are laid out by their two principal components (t-SNE needs a neighbourhood).
MIN_TSNE = 5


def choose_landmarks(rows: np.ndarray, count: int, seed: int) -> np.ndarray:
    """`count` of the sorted `rows` at random (all of them when fewer), sorted: the same for the same seed."""
    if len(rows) <= count:
        return rows.copy()
    return np.sort(np.random.default_rng(seed).choice(rows, size=count, replace=False))


def perplexity_for(count: int) -> float:
    return min(PERPLEXITY, max(1.0, (count - 1) / 3))


def lay_out(vectors: np.ndarray, seed: int) -> np.ndarray:
    """2-D positions (float32) of the landmarks' unit vectors, centred, the larger side spanning [-1, 1]."""
    if len(vectors) < MIN_TSNE:
        centred = vectors - vectors.mean(axis=0)
        _, _, axes = np.linalg.svd(centred, full_matrices=False)
        xy = np.zeros((len(vectors), 2))
        xy[:, : min(2, len(axes))] = centred @ axes[:2].T
    else:
        tsne = TSNE(n_components=2, perplexity=perplexity_for(len(vectors)), init="pca", random_state=seed)
        xy = tsne.fit_transform(vectors.astype(np.float64))
    low, high = xy.min(axis=0), xy.max(axis=0)
    span = float((high - low).max())
    return ((xy - (low + high) / 2) / (span / 2 if span > 0 else 1.0)).astype(np.float32)


class Placer:
    """Places pages among the landmarks: each at the weighted mean of its nearest landmarks' positions."""

    def __init__(self, landmark_vectors: np.ndarray, landmark_xy: np.ndarray, neighbours: int = NEIGHBOURS) -> None:
        self.index = faiss.IndexFlatIP(landmark_vectors.shape[1])
        self.index.add(np.ascontiguousarray(landmark_vectors, dtype=np.float32))
        self.xy = landmark_xy.astype(np.float64)
        self.k = min(neighbours, len(landmark_xy))

    def place(self, vectors: np.ndarray) -> np.ndarray:
        """(n, 2) float32 positions of n unit vectors.

        A landmark at squared distance d² weighs exp(-(d² - d₁²) / s²), d₁ the nearest one's and s²
        the mean excess over the k: a bandwidth set per page, as t-SNE and UMAP set one, so that the
        nearest landmark leads and nearly equal ones share (a fixed bandwidth would pull pages in
        sparse regions to their neighbours' centroid and those in dense ones onto a landmark).
        """
        similarity, nearest = self.index.search(np.ascontiguousarray(vectors, dtype=np.float32), self.k)
        excess = 2.0 * (similarity[:, :1] - similarity)  # d² - d₁² for unit vectors, >= 0
        scale = excess.mean(axis=1, keepdims=True)
        weights = np.exp(-excess / np.where(scale > 0, scale, 1.0))
        weights /= weights.sum(axis=1, keepdims=True)
        return np.einsum("nk,nkc->nc", weights, self.xy[nearest]).astype(np.float32)
