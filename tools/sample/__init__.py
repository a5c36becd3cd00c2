"""`comix-embed sample`: a synthetic, deterministic comic corpus (images, DataSpecs, list).

The corpus looks like the users' own (docs/inputs.md, "DataSpec files"): books of 8-40 JPEG pages of real scan
sizes in `<Book>/JPG4CBZ/0001.jpg` trees, one minimal DataSpec per page whose panel boxes and
text match what is drawn, and a list file with a few Windows-style lines. It exists so that the
whole pipeline, its tests and its benchmarks run without anyone's private comics.

Every page is drawn from its own RNG, seeded by (seed, page index), so the same seed gives
byte-identical files whatever the number of processes that drew them.

`corpus.make_sample` is the entry point for code (tests, benchmarks); `command.py` is the CLI.
The corpus is planned in `corpus.py`, each page made in `page.py` from its panel boxes
(`layout.py`), its art (`drawing.py`), its lettering (`lettering.py`) and its text (`text.py`).
"""
