"""How one comix-embed process starts another, so that nothing in the current folder shadows it.

`python -m` puts the current folder first on `sys.path`; a user's `common/` or `writer.py` there
would be imported instead of ours. `-P` (Python 3.11+) leaves it out, and the one import name,
`comix_embed`, is all the package puts on the path.
"""

from __future__ import annotations

import sys


def module_argv(module: str, *args: str) -> list[str]:
    """The command line that runs `python -m module args...` with this interpreter, safely."""
    return [sys.executable, "-P", "-m", module, *args]


def cli_argv(*args: str) -> list[str]:
    """The command line of `comix-embed args...` with this interpreter."""
    return module_argv("comix_embed.cli", *args)
