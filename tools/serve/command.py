"""`comix-embed serve`: search stores and look at their pages in a browser; read-only.

    comix-embed serve --zarr Z [--zarr Z2 ...] --checkpoint C [--image-root R ...] [--path-map A=B]
                      [--host 127.0.0.1] [--port 8000]

Serves one or more stores (say the four encoder-mode stores of one list): every query is embedded
for each store by the checkpoint in that store's encoder mode, and each store answers apart. The
checkpoint must be the one that made every store (its SHA-256 is checked, as `query` checks it).
Page images are found as the workers found them: the store records each page's path relative to
its image root and the root's index, so give the image roots in the order `run` was given them.

Flask (the application) served by waitress (a production WSGI server in pure Python, with a
thread pool). It listens on 127.0.0.1 unless `--host` says otherwise; any other host needs
basic-auth credentials in COMIX_SERVE_USER and COMIX_SERVE_PASSWORD (as Flower's come from the
environment in compose.yaml), and it refuses to start without them. Once listening it prints
`serving N store(s) on http://HOST:PORT/` (with `--port 0`, the port the system chose).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
from pathlib import Path
from typing import Any

from comix_embed.common import config
from comix_embed.common.errors import EXIT_OK, UsageError
from comix_embed.common.inputs.paths import ImageResolver, PathMapper, parse_path_map
from comix_embed.common.inputs.reading import add_remote_arguments, check_root
from comix_embed.common.model.options import add_model_arguments
from comix_embed.common.store.reading import resolve_store
from comix_embed.tools.query_model import QueryEncoder, check_store_model, load_query_model
from comix_embed.tools.search import DEFAULT_PANEL_MEMORY
from comix_embed.tools.serve.app import ServeState, create_app
from comix_embed.tools.serve.stores import ServedStore, store_names
from comix_embed.tools.serve.thumbs import DEFAULT_CACHE_BYTES, ThumbnailCache

log = logging.getLogger("comix.serve")
DEFAULT_PORT = 8000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--zarr",
        action="append",
        required=True,
        help="a store, the output folder holding combined_embeddings.zarr, or a folder or s3://bucket/prefix/ "
        "of snapshots (repeatable: one per store)",
    )
    add_model_arguments(parser, encoder_mode=False, checkpoint_help="the checkpoint that made the stores")
    parser.add_argument(
        "--device", default="auto", help="where queries are encoded: auto (the first GPU, else the CPU), cpu, cuda:N"
    )
    parser.add_argument(
        "--image-root",
        action="append",
        required=True,
        help="where the page images lie: a folder, s3://bucket/prefix/ or https://host/prefix/ "
        "(repeatable, in the order `run` was given them)",
    )
    add_remote_arguments(parser)
    parser.add_argument(
        "--path-map",
        action="append",
        default=[],
        help=r"PREFIX=DIR, as `run` takes it: absolute DataSpec image paths under /images/ are mapped with it",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free)")
    parser.add_argument("--threads", type=int, default=8, help="requests handled at once (default 8)")
    parser.add_argument(
        "--thumb-cache-mb",
        type=int,
        default=DEFAULT_CACHE_BYTES >> 20,
        help=f"memory for cached thumbnails, in MB (default {DEFAULT_CACHE_BYTES >> 20})",
    )
    parser.add_argument(
        "--exact-decode", action="store_true", help="decode image queries at full resolution (stores made so)"
    )
    parser.add_argument(
        "--panel-memory-mb",
        type=int,
        default=DEFAULT_PANEL_MEMORY >> 20,
        help="largest panel matrix held in memory per store; above it panel searches stream (default 4096)",
    )


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and `localhost`: reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def credentials_for(host: str) -> tuple[str, str] | None:
    """The basic-auth credentials to require: from the environment, and mandatory off loopback."""
    user, password = config.SERVE_USER.name, config.SERVE_PASSWORD.name
    given = [v.name for v in (config.SERVE_USER, config.SERVE_PASSWORD) if v.get()]
    if len(given) == 1:
        raise UsageError(f"only {given[0]} is set: set both {user} and {password}")
    credentials = config.serve_credentials()
    if credentials is None and not is_loopback(host):
        raise UsageError(
            f"--host {host} listens beyond this machine: set {user} and "
            f"{password} (basic-auth credentials), or keep the default 127.0.0.1"
        )
    return credentials


def build_state(args: argparse.Namespace) -> ServeState:
    """The stores (each model-checked, index loaded), the image roots and the thumbnail cache."""
    path_maps = [parse_path_map(m) for m in args.path_map]
    resolver = ImageResolver(args.image_root, path_maps)
    for root in resolver.roots:
        check_root(root)
    paths = [resolve_store(z) for z in args.zarr]
    if len(set(paths)) != len(paths):
        raise UsageError("the same store is given twice with --zarr")
    loaded, tokenizer = load_query_model(args.checkpoint, args.tokenizer, args.device, trust=args.trust_checkpoint)

    def encoder_for(path: Path, attrs: dict[str, Any]) -> QueryEncoder:
        check_store_model(loaded, tokenizer, path, attrs)
        mode = str(attrs.get("encoder_mode", "fused"))
        encoder = QueryEncoder(loaded, tokenizer, mode, fast_decode=not args.exact_decode)
        encoder.warm_up()  # the first query then costs what every later one does
        return encoder

    stores = {}
    for name, path in zip(store_names(paths), paths):
        store = ServedStore.open(name, path, encoder_for, args.panel_memory_mb << 20, len(resolver.roots))
        index = store.index()
        log.info(
            "%s: %s, %s, %d committed rows, %d searchable pages",
            name,
            path,
            store.encoder_mode,
            index.committed,
            len(index.rows),
        )
        stores[name] = store
    return ServeState(
        stores=stores,
        resolver=resolver,
        mapper=PathMapper(path_maps),
        thumbs=ThumbnailCache(args.thumb_cache_mb << 20),
        credentials=credentials_for(args.host),
    )


def run(args: argparse.Namespace) -> int:
    from waitress import create_server

    credentials_for(args.host)  # refuse before loading anything
    if args.thumb_cache_mb < 0 or args.threads < 1:
        raise UsageError("--thumb-cache-mb must be >= 0 and --threads >= 1")
    serve_state = build_state(args)
    server = create_server(
        create_app(serve_state), host=args.host, port=args.port, threads=args.threads, ident="comix-embed"
    )
    listening = getattr(server, "effective_listen", None) or [(server.effective_host, server.effective_port)]
    urls = ", ".join(f"http://{f'[{h}]' if ':' in str(h) else h}:{p}/" for h, p in listening)
    print(f"serving {len(serve_state.stores)} store(s) on {urls}", flush=True)
    try:
        server.run()
    except KeyboardInterrupt:
        print("stopped", flush=True)
    finally:
        server.close()
    return EXIT_OK
