"""`python -m comix_embed` is `comix-embed`."""

import sys

from comix_embed.cli import main

sys.exit(main())
