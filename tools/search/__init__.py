"""Search over a store's committed rows: by page, by panel vectors, by keyword; with an index beside it.

One module per job: `rows` reads the committed prefix; `exact` searches rows exactly (matrices in
memory, or streamed); `layout`, `build` and `ann` keep the approximate index beside the store
(faiss, in generations); `searcher` answers queries from both, never stale; `text` counts
keywords; `lookup` finds a pasted page; `ranking` orders candidates; `answers` declares what a
query answers; `command` is `comix-embed index`. The names below are the package's API (query,
serve, benchmarks).
"""

from comix_embed.tools.search.build import BuildReport, build_index
from comix_embed.tools.search.exact import DEFAULT_PANEL_MEMORY
from comix_embed.tools.search.ranking import Hit, normalise, top_k
from comix_embed.tools.search.searcher import SearchIndex
from comix_embed.tools.search.text import TextIndex

__all__ = [
    "DEFAULT_PANEL_MEMORY",
    "BuildReport",
    "Hit",
    "SearchIndex",
    "TextIndex",
    "build_index",
    "normalise",
    "top_k",
]
