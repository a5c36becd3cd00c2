"""`comix-embed query`: search a store's committed pages by text, by page, by keyword or by image.

    comix-embed query --zarr STORE (--text "superhero fighting villain" | --like PAGE_ID | --keyword WORD
                      | --image FILE) [--top-k 10] [--panels] [--json] [--checkpoint CKPT [--tokenizer DIR]]

Modes (one of):
- `--text` (old `--query`): semantic search through the model. The text is encoded as the users'
  search UI did (docs/model.md, "Query encoders"): one panel with a zero image, the query's
  tokens and zero composition, through the store's encoder mode; it is compared by cosine with
  every valid panel, and pages rank by their best panel (the `panel` column names it). Needs the
  store's own `--checkpoint` (with its tokenizer, the store's model identity); the tokenizer comes from
  `--tokenizer`, else beside the checkpoint, else the local roberta-base cache.
- `--like` (old `--query_page_id`): pages by cosine of their page embeddings; the page itself ranks
  first (score 1.0). PAGE_ID is a page id, its manifest path, or a unique end of either, matched
  case-insensitively with `\\` read as `/` (paste a path as it is).
- `--keyword` (old `--search_text`): case-insensitive substring in the page text; the score is the
  number of occurrences, ties in store order; the snippet is cut around the first one.
- `--image`: the image is embedded as a worker embeds a page without panels (the whole image as
  one panel, the worker's own preprocessing and the checkpoint's fusion; tools/query_model.py),
  so query and store share one space; pages rank by cosine of page embeddings. Needs the store's
  `--checkpoint`, like `--text`; `--exact-decode` if the store was embedded with it.

Filters narrow any mode before it ranks (tools/search/filters.py): `--series TEXT` (contains),
`--volume`, `--issue`, `--source` (equal), `--id-contains`, `--text-contains PHRASE`, `--status
ok|failed`, all case-insensitive, or the users' `--filters '{"series": "...", "volume": "..."}'`;
the search then ranks within the pages that pass, with its own top-k.

`--panels` ranks panels instead of pages (a page may then appear more than once): with `--text`
the best panels; with `--like` the panels nearest to any of the page's panels (its own first);
with `--keyword` the panels whose text holds the word; with `--image` the panels nearest to the
image's panel embedding.

Only committed rows are searched; failed pages never appear. `--json` prints one object:
`{store, query, mode, panels, committed_rows, searchable_pages, index_generation (null: none used),
indexed_rows, filter, filtered_pages (null: no filter), results: [{rank, score, page_id, series, page_num, row, panel, manifest_path,
snippet}]}` (`comix-embed serve` answers with the same object). Exit 2 on bad usage (unknown page, missing or foreign checkpoint, unreadable image).

With an index beside the store (`comix-embed index`, tools/search/), pages and panels are found
through it, and rows committed (or changed by `--retry-failed`) since it was built are searched
exactly and merged in; `--no-index` searches every row exactly. Without an index, page embeddings
and text are held in memory (~1.5 KB + text per page); panel matrices above `--panel-memory-mb`
are streamed from the store (tools/search/exact.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import msgspec

from comix_embed.common.errors import EXIT_OK, UsageError
from comix_embed.common.inputs.locations import parse_location
from comix_embed.common.inputs.read_errors import InputUnreadable
from comix_embed.common.inputs.reading import read_bytes
from comix_embed.common.messages import encode_json
from comix_embed.common.model.options import add_model_arguments
from comix_embed.common.store.reading import read_attrs, resolve_store
from comix_embed.tools.arguments import add_store_argument
from comix_embed.tools.query_model import QueryEncoder, check_store_model, load_query_model
from comix_embed.tools.search import DEFAULT_PANEL_MEMORY, Hit, SearchIndex
from comix_embed.tools.search.answers import HitRecord, QueryAnswer
from comix_embed.tools.search.filters import FIELDS, STATUSES, PageFilter

# Query modes, as `--json` names them; those that go through the model need the store's checkpoint.
MODES = ("text", "like", "keyword", "image", "id")
MODEL_MODES = ("text", "image")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_store_argument(parser)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--text", "--query", dest="text", help="semantic search for this text (needs --checkpoint)")
    mode.add_argument("--like", "--query_page_id", dest="like", metavar="PAGE_ID", help="pages similar to this page")
    mode.add_argument("--keyword", "--search_text", dest="keyword", metavar="WORD", help="pages whose text holds WORD")
    mode.add_argument(
        "--image",
        metavar="FILE",
        help="pages similar to this image: a file, s3://bucket/key or https://... (needs --checkpoint)",
    )
    mode.add_argument(
        "--id",
        "--query_page_substr",
        dest="id",
        metavar="FRAGMENT",
        help="every page whose id holds FRAGMENT (case-insensitive, \\ read as /), --top-k at a time from --offset",
    )
    filters = parser.add_argument_group("filters, applied before ranking (case-insensitive)")
    for name in FIELDS:
        filters.add_argument(
            f"--{name.replace('_', '-')}",
            dest=f"filter_{name}",
            choices=STATUSES if name == "status" else None,
            default="",
            help=_FILTER_HELP[name],
        )
    filters.add_argument("--filters", metavar="JSON", help='the same as one JSON object: \'{"series": "x"}\'')
    parser.add_argument("--offset", type=int, default=0, help="--id: the first match to show (default 0)")
    parser.add_argument("--top-k", "--top_k", dest="top_k", type=int, default=10, help="results to show (default 10)")
    parser.add_argument("--panels", action="store_true", help="rank panels instead of pages")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    add_model_arguments(
        parser, required=False, encoder_mode=False, checkpoint_help="the store's checkpoint (for --text and --image)"
    )
    parser.add_argument(
        "--exact-decode",
        action="store_true",
        help="decode the --image at full resolution (as workers started with --exact-decode did)",
    )
    parser.add_argument(
        "--panel-memory-mb",
        type=int,
        default=DEFAULT_PANEL_MEMORY >> 20,
        help="largest panel matrix held in memory; above it panel searches stream the store (default 4096)",
    )
    parser.add_argument(
        "--no-index", action="store_true", help="search every row exactly, even where the store has an index"
    )


_FILTER_HELP = {
    "series": "only pages whose series contains TEXT",
    "volume": "only pages of this volume",
    "issue": "only pages of this issue",
    "source": "only pages of this source",
    "id_contains": "only pages whose id contains TEXT",
    "text_contains": "only pages whose text contains PHRASE",
    "status": "only ok (embedded) or failed pages",
}


def page_filter(args: argparse.Namespace) -> PageFilter:
    """The filter of the command line: `--filters` JSON, with the single flags laid over it."""
    flags = PageFilter.of_values({name: getattr(args, f"filter_{name}") for name in FIELDS})
    return PageFilter.of_json(args.filters).merged(flags) if args.filters else flags


def run(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        raise UsageError("--top-k must be at least 1")
    store = resolve_store(args.zarr)
    given = (args.text, args.like, args.keyword, args.image, args.id)
    mode, query = next((m, q) for m, q in zip(MODES, given) if q is not None)
    if args.offset < 0:
        raise UsageError("--offset must be 0 or more")
    where = page_filter(args)
    image = _read_image(args.image) if mode == "image" else None
    encoder = _encoder(args, store, mode) if mode in MODEL_MODES else None
    index = SearchIndex.load(store, panel_memory=args.panel_memory_mb << 20, use_index=not args.no_index)
    try:
        hits, matches = find(
            index, mode, str(query), args.top_k, args.panels, encoder, image, offset=args.offset, where=where
        )
    finally:
        if encoder is not None:
            encoder.close()
    result = report(index, str(query), mode, args.panels, hits, matches, args.offset, where)
    if args.json:
        print(msgspec.json.format(encode_json(result), indent=2).decode())
    else:
        if result.filtered_pages is not None:
            print(f"filtered to {result.filtered_pages} of {result.committed_rows} pages: {where.describe()}")
        _print_table(index, str(query), mode, args.panels, result.results)
    return EXIT_OK


def _read_image(text: str) -> bytes:
    try:
        return read_bytes(parse_location(text, "--image"))
    except InputUnreadable as exc:
        raise UsageError(f"--image {exc.where}: cannot read it ({exc.reason})") from None


def _encoder(args: argparse.Namespace, store: Path, mode: str) -> QueryEncoder:
    """The query encoder for --text or --image, refused unless the store was made by its checkpoint."""
    if args.checkpoint is None:
        raise UsageError(f"--{mode} encodes the query with the model: pass --checkpoint (the store's checkpoint)")
    attrs = read_attrs(store)
    loaded, tokenizer = load_query_model(args.checkpoint, args.tokenizer, trust=args.trust_checkpoint)
    check_store_model(loaded, tokenizer, store, attrs)
    return QueryEncoder(loaded, tokenizer, str(attrs.get("encoder_mode", "fused")), fast_decode=not args.exact_decode)


def find(
    index: SearchIndex,
    mode: str,
    query: str,
    k: int,
    panels: bool = False,
    encoder: QueryEncoder | None = None,
    image: bytes | None = None,
    panel: int | None = None,
    offset: int = 0,
    where: PageFilter | None = None,
) -> tuple[list[Hit], int | None]:
    """The hits of one query on one store (`comix-embed serve` asks each of its stores in turn),
    and, for `id`, how many pages match in all (None for the ranked modes).

    `query` is the text, the page reference (`like`), the word, the image's name, or a part of a
    page id (`id`: every page holding it, `k` from `offset` on, in row order); `image` holds the
    image's bytes; `panel` narrows `like` to one panel of the page (pages, or with `panels` panels,
    nearest to it). Model modes need the store's `encoder`. `where` narrows every mode before it ranks.
    """
    if mode in MODEL_MODES and encoder is None:
        raise UsageError(f"a {mode} query needs the store's checkpoint")
    allowed = index.allowed(where)
    if mode == "text":
        assert encoder is not None
        return index.panels(encoder.text(query), k, not panels, allowed), None
    if mode == "image":
        assert encoder is not None and image is not None
        vectors = encoder.image(image, query)
        return (
            index.panels(vectors.panel, k, False, allowed) if panels else index.nearest_pages(vectors.page, k, allowed)
        ), None
    if mode == "like":
        row = index.find_row(query)
        if panel is not None:
            return index.like_panel(row, panel, k, not panels, allowed), None
        return (index.like_panels(row, k, False, allowed) if panels else index.like(row, k, allowed)), None
    if mode == "keyword":
        return index.keyword(query, k, panels, allowed), None
    if mode == "id":
        return index.id_matches(query, k, offset, allowed)
    raise UsageError(f"unknown query mode {mode!r} (one of {', '.join(MODES)})")


def report(
    index: SearchIndex,
    query: str,
    mode: str,
    panels: bool,
    hits: list[Hit],
    matches: int | None = None,
    offset: int = 0,
    where: PageFilter | None = None,
) -> QueryAnswer:
    """The `--json` record of a query: the store, the query, and the hits described (for `id`,
    ranked from `offset` + 1, with every match counted), with the filter and how many pages pass it."""
    allowed = index.allowed(where)
    return QueryAnswer(
        store=str(index.path),
        query=query,
        mode=mode,
        panels=panels,
        committed_rows=index.committed,
        searchable_pages=len(index.rows),
        index_generation=index.generation,
        indexed_rows=index.covered,
        results=index.describe(hits, query if mode == "keyword" else None, first_rank=offset + 1),
        matches=matches,
        offset=offset,
        filter=where.fields() if where is not None else {},
        filtered_pages=None if allowed is None else int(allowed.sum()),
    )


def _print_table(index: SearchIndex, query: str, mode: str, panels: bool, results: list[HitRecord]) -> None:
    unit = "panels" if panels else "pages"
    print(
        f"{mode} {query!r}: top {len(results)} {unit} of {len(index.rows)} searchable pages "
        f"({index.committed} committed) in {index.path}"
        + (f", index generation {index.generation} covers {index.covered} rows" if index.generation else "")
    )
    if not results:
        print("no results")
        return
    columns = ["rank", "score", "page_id", "series", "page", "panel", "text"]
    rows = [
        [
            str(r.rank),
            _score(r.score, mode),
            r.page_id,
            r.series,
            r.page_num,
            "" if r.panel is None else str(r.panel),
            r.snippet,
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
