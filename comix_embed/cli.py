"""`comix-embed`: one console script, one subcommand per tool.

Each subcommand lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`;
modules are imported only when their command runs, so `comix-embed sample` does not load torch.
Here, and only here, a command's end becomes an exit status: what `run` returns, or the status of
the CommandError it raised (its message printed as `error: ...`), 1 when the broker cannot be
reached (one line naming it, not a traceback), or 130 on Ctrl-C; every status
and its meaning is in common/errors.py, and `comix-embed --help` lists them.
Logging is set up before the command's module is imported, third-party libraries at WARNING
(faiss's loader, for one, says at INFO which CPU build it loads: noise before a query's results).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from kombu.exceptions import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError

from comix_embed.common import config
from comix_embed.common.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    UsageError,
    describe_statuses,
)
from comix_embed.common.inputs.locations import is_url
from comix_embed.common.inputs.reading import apply_remote_arguments
from comix_embed.common.store.v2 import GENERATOR, find_v2_store

# Our loggers: `comix.*` and the modules' own (`comix_embed.*`), at the level --log-level names.
OUR_LOGGERS = ("comix", "comix_embed")
# Everything else (the root logger's level) speaks only at WARNING and above. The Celery worker
# sets up its own logging when it starts (its banner, tasks received and done).
THIRD_PARTY_LEVEL = logging.WARNING

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("comix_embed.demo", "make sample data and a tiny checkpoint, embed it all, show the results"),
    "sample": (
        "comix_embed.tools.sample.command",
        "write a synthetic, deterministic comic corpus (images, DataSpecs, list)",
    ),
    "init-checkpoint": ("comix_embed.tools.init_checkpoint", "write an UNTRAINED checkpoint and a tokenizer beside it"),
    "run": ("comix_embed.run", "embed a list on this machine: Redis, workers and writer in one command"),
    "enqueue": ("comix_embed.producer.enqueue", "register a list in the store and send its batches to the workers"),
    "worker": ("comix_embed.consumers.worker", "start a Celery GPU worker that embeds batches"),
    "writer": ("comix_embed.writer.service", "commit workers' results to the store, in order, with manifests"),
    "status": ("comix_embed.producer.status", "committed, queued, in-flight and failed pages, rate and ETA"),
    "summaries": ("comix_embed.tools.summaries", "print per-page norms and text of committed rows"),
    "diagnose": ("comix_embed.tools.diagnose.command", "check a store for gaps, corruption and leftovers"),
    "query": ("comix_embed.tools.query", "search a store by text, by page, by keyword, or by image"),
    "index": ("comix_embed.tools.search.command", "build or extend a store's search index (faster queries at scale)"),
    "map": ("comix_embed.tools.map.command", "lay out a store's pages in 2-D for serve's map, or place new rows"),
    "dataspec": ("comix_embed.tools.dataspec_builder.command", "make DataSpecs from COCO detections and VLM text"),
    "serve": ("comix_embed.tools.serve.command", "a read-only web page to search stores and see their pages"),
    "snapshot": (
        "comix_embed.tools.snapshot.command",
        "copy a growing store's committed rows to a folder or to S3, consistently and incrementally",
    ),
    "import-v2": (
        "comix_embed.writer.import_v2.command",
        "convert a store made by generate_embeddings_zarr_v2 into ours, without embedding again",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="comix-embed",
        description=__doc__.splitlines()[0],
        epilog="exit status:\n" + describe_statuses(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        help="DEBUG, INFO, WARNING (default INFO): of comix-embed's own log lines; other libraries' show from WARNING",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module_name, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def setup_logging(level_name: str) -> None:
    """Our log lines at `level_name` (INFO unless named), on stderr; other libraries' at WARNING."""
    logging.basicConfig(
        level=THIRD_PARTY_LEVEL,
        format="%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    level = getattr(logging, str(level_name).upper(), logging.INFO)
    for name in OUR_LOGGERS:
        logging.getLogger(name).setLevel(level)


# What redis-py and Celery raise when the broker cannot be reached: an error message, not a traceback.
BROKER_UNREACHABLE = (RedisConnectionError, OperationalError)


def _mirror_remote_stores(args: argparse.Namespace) -> None:
    """A read command's `--zarr s3://...` (snapshots) becomes the folder of a local mirror of the
    newest one, so that every read command opens remote snapshots alike (tools/snapshot/mirror.py)."""
    given = getattr(args, "zarr", None)
    if not isinstance(given, (str, list)) or not any(is_url(z) for z in ([given] if isinstance(given, str) else given)):
        return
    from comix_embed.tools.snapshot.mirror import readable

    args.zarr = readable(given) if isinstance(given, str) else [readable(z) for z in given]


def _read_v2_stores(args: argparse.Namespace) -> None:
    """A read command's `--zarr` naming a generate_embeddings_zarr_v2 store becomes the folder of
    its converted copy (writer/import_v2/cache.py); the v2 store itself is only read."""
    given = getattr(args, "zarr", None)
    if not isinstance(given, (str, list)):
        return
    from comix_embed.writer.import_v2.cache import readable

    args.zarr = readable(given) if isinstance(given, str) else [readable(z) for z in given]


def _refuse_v2_output(args: argparse.Namespace, command: str) -> None:
    """`run`, `enqueue`, `status` or `writer` pointed at a v2 store: say what it is and how to import it."""
    output_dir = getattr(args, "output_dir", None)
    found = find_v2_store(output_dir) if output_dir is not None and command != "import-v2" else None
    if found is not None:
        raise UsageError(
            f"{found} is a store made by {GENERATOR}, which this command does not work on. Import it into a "
            f"store of ours first: comix-embed import-v2 --from {found} --output-dir NEW_FOLDER --checkpoint C "
            "(C: the checkpoint that made it; without it the import is read-only for embedding)"
        )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    top, rest = parser.parse_known_args(argv)
    if not top.command:
        parser.print_help()
        return EXIT_USAGE
    setup_logging(top.log_level)
    module_name, help_text = COMMANDS[top.command]
    module = importlib.import_module(module_name)
    cmd_parser = argparse.ArgumentParser(prog=f"comix-embed {top.command}", description=help_text)
    module.add_arguments(cmd_parser)
    # parse_known_args above stopped at the command; everything after it belongs to the command
    cmd_args = cmd_parser.parse_args(argv[argv.index(top.command) + 1 :])
    try:
        config.check()
        apply_remote_arguments(cmd_args)  # --endpoint-url, --anonymous: for this process and its children
        _mirror_remote_stores(cmd_args)
        _refuse_v2_output(cmd_args, top.command)
        _read_v2_stores(cmd_args)
        return int(module.run(cmd_args) or EXIT_OK)
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.status
    except BROKER_UNREACHABLE as exc:  # the broker down or unreachable before the command could begin
        broker = config.broker_url(getattr(cmd_args, "broker", None))
        print(f"error: cannot reach the broker at {config.masked_url(broker)}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
