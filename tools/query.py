"""`comix-embed query`: search a store's committed pages by text, by page, or by keyword.

    comix-embed query --zarr STORE (--text "superhero fighting villain" | --like PAGE_ID | --keyword WORD)
                      [--top-k 10] [--panels] [--json] [--checkpoint CKPT [--tokenizer DIR]]

Modes (one of):
- `--text` (old `--query`): semantic search through the model. The text is encoded as the users'
  search UI did (spec/closure-lite.md, Query encoders): one panel with a zero image, the query's
  tokens and zero composition, through the store's encoder mode; it is compared by cosine with
  every valid panel, and pages rank by their best panel (the `panel` column names it). Needs the
  store's own `--checkpoint` (with its tokenizer, the store's model identity); the tokenizer comes from
  `--tokenizer`, else beside the checkpoint, else the local roberta-base cache.
- `--like` (old `--query_page_id`): pages by cosine of their page embeddings; the page itself ranks
  first (score 1.0). PAGE_ID is a page id, its manifest path, or a unique end of either, matched
  case-insensitively with `\\` read as `/` (paste a path as it is).
- `--keyword` (old `--search_text`): case-insensitive substring in the page text; the score is the
  number of occurrences, ties in store order; the snippet is cut around the first one.

`--panels` ranks panels instead of pages (a page may then appear more than once): with `--text`
the best panels; with `--like` the panels nearest to any of the page's panels (its own first);
with `--keyword` the panels whose text holds the word.

Only committed rows are searched; failed pages never appear. `--json` prints one object:
`{store, query, mode, panels, committed_rows, searchable_pages, results: [{rank, score, page_id,
series, page_num, row, panel, manifest_path, snippet}]}`. Exit 2 on bad usage (unknown page,
missing or foreign checkpoint).

For stores larger than memory, see common/search.py: page embeddings and text are held in memory
(~1.5 KB + text per page); panel matrices above `--panel-memory-mb` are streamed from the store.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from comix_embed.common.errors import UsageError
from comix_embed.common.store import read_attrs, resolve_store
from comix_embed.tools.search import DEFAULT_PANEL_MEMORY, Hit, SearchIndex

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--zarr",
        "--zarr_path",
        "--zarr-path",
        dest="zarr",
        required=True,
        help="the store, or the output folder holding combined_embeddings.zarr",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--text", "--query", dest="text", help="semantic search for this text (needs --checkpoint)")
    mode.add_argument("--like", "--query_page_id", dest="like", metavar="PAGE_ID", help="pages similar to this page")
    mode.add_argument("--keyword", "--search_text", dest="keyword", metavar="WORD", help="pages whose text holds WORD")
    parser.add_argument("--top-k", "--top_k", dest="top_k", type=int, default=10, help="results to show (default 10)")
    parser.add_argument("--panels", action="store_true", help="rank panels instead of pages")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--checkpoint", type=Path, help="the store's checkpoint (for --text)")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer directory (default: beside the checkpoint)")
    parser.add_argument(
        "--panel-memory-mb",
        type=int,
        default=DEFAULT_PANEL_MEMORY >> 20,
        help="largest panel matrix held in memory; above it panel searches stream the store (default 4096)",
    )


def run(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        raise UsageError("--top-k must be at least 1")
    store = resolve_store(args.zarr)
    encoder = _text_encoder(args, store) if args.text is not None else None
    index = SearchIndex.load(store, panel_memory=args.panel_memory_mb << 20)
    mode, hits = _search(index, args, encoder)
    keyword = args.keyword if mode == "keyword" else None
    results = [{"rank": i + 1, **r} for i, r in enumerate(index.describe(hits, keyword))]
    if mode == "keyword":  # a count of occurrences, not a similarity
        for r in results:
            r["score"] = int(r["score"])
    query = next(q for q in (args.text, args.like, args.keyword) if q is not None)
    if args.json:
        print(json.dumps(_report(index, query, mode, args.panels, results), ensure_ascii=False, indent=2))
    else:
        _print_table(index, query, mode, args.panels, results)
    return 0


def _text_encoder(args: argparse.Namespace, store: Path) -> tuple[Any, Any, str]:
    """(model, tokenizer, encoder mode) for --text, refused unless the store was made by it."""
    if args.checkpoint is None:
        raise UsageError("--text encodes the query with the model: pass --checkpoint (the store's checkpoint)")
    from comix_embed.common.checkpoint import load_model
    from comix_embed.common.identity import ModelMismatch, check_same_model, make_identity
    from comix_embed.common.tokenizer import load_tokenizer

    attrs = read_attrs(store)
    loaded = load_model(args.checkpoint)
    tokenizer = load_tokenizer(args.tokenizer, args.checkpoint)
    mode = str(attrs.get("encoder_mode", "fused"))
    ours = make_identity(loaded.sha256, loaded.config.d, mode, tokenizer.identity, tokenizer.legacy_identity)
    try:  # the one "same model" test (common/identity.py): otherwise the vectors are not comparable
        check_same_model(attrs, ours, what="query model")
    except ModelMismatch as exc:
        raise UsageError(f"{args.checkpoint} did not make this store: {exc}") from None
    return loaded, tokenizer, mode


def _search(
    index: SearchIndex, args: argparse.Namespace, encoder: tuple[Any, Any, str] | None
) -> tuple[str, list[Hit]]:
    k = args.top_k
    if encoder is not None:
        from comix_embed.tools.search import text_vector

        vector = text_vector(*encoder[:2], args.text, encoder[2])
        return "text", index.panels(vector, k, per_page=not args.panels)
    if args.like is not None:
        row = index.find_row(args.like)
        return "like", index.like_panels(row, k, per_page=False) if args.panels else index.like(row, k)
    return "keyword", index.keyword(args.keyword, k, panels=args.panels)


def _report(index: SearchIndex, query: str, mode: str, panels: bool, results: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "store": str(index.path),
        "query": query,
        "mode": mode,
        "panels": panels,
        "committed_rows": index.committed,
        "searchable_pages": len(index.rows),
        "results": results,
    }


def _print_table(index: SearchIndex, query: str, mode: str, panels: bool, results: list[dict[str, Any]]) -> None:
    unit = "panels" if panels else "pages"
    print(
        f"{mode} {query!r}: top {len(results)} {unit} of {len(index.rows)} searchable pages "
        f"({index.committed} committed) in {index.path}"
    )
    if not results:
        print("no results")
        return
    columns = ["rank", "score", "page_id", "series", "page", "panel", "text"]
    rows = [
        [
            str(r["rank"]),
            _score(r["score"], mode),
            r["page_id"],
            r["series"],
            r["page_num"],
            "" if r["panel"] is None else str(r["panel"]),
            r["snippet"],
        ]
        for r in results
    ]
    if all(not row[5] for row in rows):
        columns.pop(5)
        rows = [row[:5] + row[6:] for row in rows]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(columns)]
    for line in [columns, *rows]:
        sys.stdout.write("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() + "\n")


def _score(score: float, mode: str) -> str:
    return str(score) if mode == "keyword" else f"{score:.4f}"
