"""`comix-embed dataspec`: DataSpecs and their list file from panel detections and VLM text.

This is how users make DataSpecs (docs/inputs.md, "Making DataSpecs from detections"), and this
command writes the same files as the users' own DataSpec writer did:
a COCO predictions file gives each page's panel boxes, a VLM JSON per page gives the panels' text,
and a mapping CSV joins them page by page.

Inputs
- `--coco`: `{"images": [...], "annotations": [...]}`, or a bare list of annotations (the
  detectron-style predictions list). Only `category_id` 1 (panel) with `score >= --min-score`
  counts; an annotation without a score counts as 1.0 (ground truth has none). An image listed
  under `images` with no panel has zero boxes; a bare list knows only the images it has boxes for.
- `--mapping`: a CSV with `image_path`, `coco_image_id` (or `predictions_json_id`),
  `vlm_json_path` and optionally `image_rel_path`; header names are matched case-insensitively,
  other columns are ignored. Relative paths are relative to the CSV's folder.
- VLM JSON: an object with a `panels` (or `VLM_panels`, `vlm_panels`) list in reading order;
  `panel_number` is not used, the list order is (as the users' writer did).

Each page's boxes are sorted by top edge, then left edge, and the i-th box gets the i-th VLM
panel's text. `--subset perfect` keeps a page only when both counts are equal; `--subset all`
writes min(boxes, VLM panels) panels and lists the pages whose counts differ in the report.

Output: `OUT/<image_rel_path with .json>` per kept page (the image folder tree is kept; without
an `image_rel_path` column the path below the images' common folder is used), the list file
(default `<OUT>_<subset>_list.txt` beside OUT; lines relative to the list's folder when below
it, else absolute), and `OUT/report.json`. The list always holds exactly this run's pages, in
mapping order; older DataSpecs already in OUT are left alone but not listed.

A dropped page has the first of these reasons, in this order:
- `bad_rel_path`: its output path would leave OUT (absolute or `..`) or be `report.json`;
- `image_missing`: the image is not there (only checked for paths this machine can see; a
  Windows path on POSIX is counted under `images_not_checked` and not dropped);
- `no_coco_entry`: the id is empty or not in the predictions;
- `vlm_missing`, `vlm_unreadable`: the VLM JSON is absent (a Windows path on POSIX counts as
  absent), or is not UTF-8 JSON with a panel list of objects;
- `no_panels`: no box reaches the score, or the VLM has no panel (a page without panels embeds
  nothing, so it is dropped in both subsets; the users' writer wrote such pages empty when both
  counts were 0);
- `count_mismatch` (perfect subset only): N detected panels, M VLM panels;
- `duplicate_output`: an earlier kept row already wrote that DataSpec (e.g. `1.png`, `1.jpg`).
`boxes_below_min_score` counts panel boxes under the score on pages that got as far as the
panel comparison (their VLM JSON was read).

The modules, one job each: `coco.py` reads the predictions, `mapping.py` the CSV, `vlm.py` the
VLM text, `build.py` turns each row into a DataSpec, `report.py` says what was kept and dropped,
and `command.py` is the command that runs them.

Exit status: 0 when at least one DataSpec was written; 3 when none was (the report says why and
the list file is empty); 2 when the CSV or the predictions file cannot be read, a required
column is missing, the CSV has no rows, or an option is invalid.
"""
