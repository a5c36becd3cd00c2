"""The `comix-embed diagnose` command: read the store once, run every check in order, print them.

What each check looks at, and the exit status, are described in the package's docstring
(`comix_embed.tools.diagnose`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from comix_embed.common.errors import EXIT_FAILED, EXIT_OK
from comix_embed.common.inputs.reading import add_remote_arguments
from comix_embed.common.store.reading import resolve_store
from comix_embed.tools.arguments import STORE_HELP
from comix_embed.tools.diagnose.audit import check_audit
from comix_embed.tools.diagnose.facts import scan_rows
from comix_embed.tools.diagnose.layout import check_layout, check_origin, check_xarray
from comix_embed.tools.diagnose.leftovers import check_leftovers
from comix_embed.tools.diagnose.load import Store, load_store, open_xarray
from comix_embed.tools.diagnose.manifests import check_manifest_rows, check_manifests
from comix_embed.tools.diagnose.page_ids import check_page_ids
from comix_embed.tools.diagnose.report import Check, header, verdict
from comix_embed.tools.diagnose.retries import check_retries
from comix_embed.tools.diagnose.values import check_masks, check_values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("zarr", metavar="Z", help=STORE_HELP)
    add_remote_arguments(parser)


def diagnose(path: Path) -> tuple[Store | None, list[Check]]:
    """Every check of the store at `path`, in the order they are printed.

    A store whose attributes, manifests or job files cannot be read gets a single failed check.
    """
    try:
        s = load_store(path)
    except Exception as exc:  # whatever stops reading the store is the finding itself
        return None, [Check("store", fails=[f"cannot read {path}: {type(exc).__name__}: {exc}"])]
    ds, error = open_xarray(path)
    facts = scan_rows(s, ds)
    checks = [
        check_layout(s),
        check_origin(s),
        check_xarray(s, ds, error, facts),
        check_manifests(s),
        check_manifest_rows(s),
        check_retries(s),
        check_page_ids(s),
        check_values(s, facts),
        check_masks(s, facts),
        check_leftovers(s),
        check_audit(s, facts),
    ]
    return s, checks


def run(args: argparse.Namespace) -> int:
    path = resolve_store(args.zarr)
    s, checks = diagnose(path)
    print(header(path, s))
    for check in checks:
        print(check.line())
    print(verdict(checks))
    return EXIT_FAILED if any(c.level == "FAIL" for c in checks) else EXIT_OK
