"""Pages the sample corpora of the tests get beside their good ones, and how many the pipeline's has."""

from __future__ import annotations

import json
from pathlib import Path

PIPELINE_PAGES = 18  # of the pipeline tests' corpus (the `job_corpus` fixture), plus 3 broken pages


def add_broken_pages(corpus_dir: Path) -> int:
    """Append to the corpus's list: a missing DataSpec, a truncated image, an image outside the root.

    Returns how many of the list's pages must end as failed.
    """
    specs = corpus_dir / "dataspecs" / "Broken - Unknown"
    specs.mkdir(parents=True)
    images = corpus_dir / "images" / "Broken - Unknown"
    images.mkdir(parents=True)
    good = next(corpus_dir.glob("images/*/JPG4CBZ/0002.jpg"))
    (images / "truncated.jpg").write_bytes(good.read_bytes()[:5000])
    panel = {"panel_coords": [10, 10, 300, 300], "text": {"dialogue": ["HEY"], "narration": [], "sfx": []}}
    (specs / "0001.json").write_text(
        json.dumps({"page_image_path": "Broken - Unknown/truncated.jpg", "panels": [panel]})
    )
    (specs / "0002.json").write_text(json.dumps({"page_image_path": "../../etc/passwd", "panels": [panel]}))
    with open(corpus_dir / "list.txt", "a", encoding="utf-8") as fh:
        fh.write("dataspecs/Broken - Unknown/0001.json\n")
        fh.write("dataspecs/Broken - Unknown/0002.json\n")
        fh.write("dataspecs/Broken - Unknown/missing.json\n")
    return 3
