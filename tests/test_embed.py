"""The embedding function on real (synthetic) pages with the tiny model."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comix_embed.common.inputs.listfile import read_list
from comix_embed.common.inputs.pages import PageSpec, PageTask, PanelSpec
from comix_embed.common.inputs.paths import ImageResolver
from comix_embed.common.model.checkpoint import load_model
from comix_embed.common.model.embed import Embedder, EmbedSettings
from comix_embed.common.model.preprocess import prepare_page
from comix_embed.common.model.tokenizer import load_tokenizer
from comix_embed.common.store.schema import STATUS_FAILED, STATUS_FULL_PAGE, STATUS_OK
from comix_embed.producer.plan import assign_rows, plan_pages
from tests.reference import reference_embed


def make_embedder(checkpoint: Path, roots: list[Path], fast_decode: bool = False, mode: str = "fused") -> Embedder:
    return Embedder(
        load_model(checkpoint),
        load_tokenizer(None, checkpoint),
        ImageResolver(roots),
        settings=EmbedSettings(encoder_mode=mode, fast_decode=fast_decode, encode_batch=40, decode_threads=2),
    )


def corpus_tasks(corpus: Path) -> list[PageTask]:
    resolver = ImageResolver([corpus / "images"])
    return assign_rows(plan_pages(read_list(corpus / "list.txt", corpus), resolver), 0)


def spec_of(task: PageTask) -> PageSpec:
    """The DataSpec of a task planned with one (a page whose DataSpec could not be read has none)."""
    assert task.spec is not None, task.page_id
    return task.spec


@pytest.fixture(scope="module")
def embedder(tiny_checkpoint: Path, corpus: Path) -> Iterator[Embedder]:
    emb = make_embedder(tiny_checkpoint, [corpus / "images"])
    yield emb
    emb.close()


def test_skipping_padded_slots_matches_all_slots(embedder: Embedder, corpus: Path) -> None:
    tasks = corpus_tasks(corpus)[:10]
    arrays, _ = embedder.embed(tasks)
    assert np.isin(arrays["status"], [STATUS_OK, STATUS_FULL_PAGE]).all()
    prepared = [prepare_page(spec_of(t), (corpus / "images" / t.image).read_bytes(), t.image) for t in tasks]
    ref = reference_embed(embedder.model, embedder.tokenizer, prepared)
    mask = arrays["panel_mask"]
    assert mask.sum(1).tolist() == [len(p.crops) for p in prepared]
    np.testing.assert_allclose(arrays["panel_embeddings"][mask], ref["panel_embeddings"][mask], atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(arrays["page_embeddings"], ref["page_embeddings"], atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(arrays["attention_weights"], ref["attention_weights"], atol=1e-5)
    assert (arrays["panel_embeddings"][~mask] == 0).all()
    assert (arrays["attention_weights"][~mask] == 0).all()
    assert (arrays["reading_order"][~mask] == -1).all()
    valid_order = arrays["reading_order"][mask]
    assert ((valid_order >= 0) & (valid_order < 12)).all()
    np.testing.assert_allclose(arrays["attention_weights"].sum(1), 1.0, atol=1e-5)


def test_page_without_panels_is_one_full_page_panel(embedder: Embedder, corpus: Path) -> None:
    task = corpus_tasks(corpus)[0]
    task.spec = PageSpec(image=spec_of(task).image, panels=[])
    arrays, _ = embedder.embed([task])
    assert arrays["status"][0] == STATUS_FULL_PAGE
    assert arrays["panel_mask"][0].tolist() == [True] + [False] * 11
    width, height = Image.open(corpus / "images" / task.image).size
    assert arrays["panel_coordinates"][0, 0].tolist() == [0, 0, width, height]
    for name in ("page_embeddings", "panel_embeddings", "attention_weights"):
        assert not np.isnan(arrays[name]).any()
    assert np.linalg.norm(arrays["page_embeddings"][0]) > 0
    assert arrays["attention_weights"][0, 0] == pytest.approx(1.0)


def test_more_than_twelve_panels_keeps_the_first_twelve(embedder: Embedder, corpus: Path) -> None:
    task = corpus_tasks(corpus)[0]
    panels = [
        PanelSpec(box=[10 * i, 10 * i, 300, 300], text={"dialogue": [f"panel {i}"], "narration": [], "sfx": []})
        for i in range(14)
    ]
    task.spec = PageSpec(image=spec_of(task).image, panels=panels)
    arrays, _ = embedder.embed([task])
    assert arrays["panel_mask"][0].all()
    assert arrays["panel_coordinates"][0, 11].tolist() == [110, 110, 300, 300]
    assert json.loads(arrays["text_content"][0, 11])["dialogue"] == ["panel 11"]
    assert json.loads(arrays["page_text"][0])["dialogue"][-1] == "panel 13"


def _bomb_png() -> bytes:
    """A 20000 x 20000 1-bit PNG of a few KB: a decompression bomb."""
    img = Image.new("1", (20000, 20000))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_broken_images_fail_alone(tiny_checkpoint: Path, corpus: Path, tmp_path: Path) -> None:
    root = tmp_path / "images"
    root.mkdir()
    good = [t for t in corpus_tasks(corpus) if spec_of(t).panels][:3]
    for t in good:
        (root / t.image).parent.mkdir(parents=True, exist_ok=True)
        (root / t.image).write_bytes((corpus / "images" / t.image).read_bytes())
    jpeg = (corpus / "images" / good[0].image).read_bytes()
    rng = np.random.default_rng(0)
    broken = {
        "truncated.jpg": jpeg[: len(jpeg) // 3],
        "zero.jpg": b"",
        "text.jpg": b"this is not an image\n" * 20,
        "corrupt.jpg": jpeg[:20] + rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(),
        "bomb.png": _bomb_png(),
    }
    for name, data in broken.items():
        (root / name).write_bytes(data)
    spec = PageSpec(image="", panels=[PanelSpec(box=[0, 0, 100, 100])])
    bad_tasks = [PageTask(row=0, page_id=name, image=name, spec=spec) for name in broken]
    tasks = [good[0], *bad_tasks[:3], good[1], *bad_tasks[3:], good[2]]
    emb = make_embedder(tiny_checkpoint, [root])
    try:
        arrays, _ = emb.embed(tasks)
        alone, _ = emb.embed(good)
    finally:
        emb.close()
    status = arrays["status"].tolist()
    assert status == [1, 2, 2, 2, 1, 2, 2, 1]
    errors = dict(zip([t.page_id for t in tasks], arrays["error"].tolist()))
    assert "truncated" in errors["truncated.jpg"]
    assert "empty" in errors["zero.jpg"] and "zero.jpg" in errors["zero.jpg"]
    assert "not a readable image" in errors["text.jpg"]
    assert errors["corrupt.jpg"] != ""
    assert "decompression bomb" in errors["bomb.png"]
    ok = [0, 4, 7]
    np.testing.assert_array_equal(arrays["page_embeddings"][ok], alone["page_embeddings"])
    failed = [i for i, s in enumerate(status) if s == STATUS_FAILED]
    assert (arrays["page_embeddings"][failed] == 0).all() and not arrays["panel_mask"][failed].any()


def test_confinement_refuses_escapes_and_embeds_the_rest(tiny_checkpoint: Path, corpus: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    good = [t for t in corpus_tasks(corpus) if spec_of(t).panels][0]
    jpeg = (corpus / "images" / good.image).read_bytes()
    (root / "ok.jpg").write_bytes(jpeg)
    (outside / "secret.jpg").write_bytes(jpeg)
    os.symlink(outside / "secret.jpg", root / "link.jpg")
    resolver = ImageResolver([root])
    spec = PageSpec(image="", panels=[PanelSpec(box=[0, 0, 400, 400])])
    tasks: list[PageTask] = []
    for image in ("ok.jpg", "../outside/secret.jpg", str(outside / "secret.jpg"), "link.jpg"):
        task = PageTask(row=len(tasks), page_id=image, spec=spec)
        try:
            task.root, task.image = resolver.locate(image)
        except Exception as exc:  # what the producer does: the page carries its reason
            task.error = str(exc)
        tasks.append(task)
    emb = make_embedder(tiny_checkpoint, [root])
    try:
        arrays, _ = emb.embed(tasks)
    finally:
        emb.close()
    assert arrays["status"].tolist() == [1, 2, 2, 2]
    errors = arrays["error"].tolist()
    assert "escapes the image root" in errors[1]
    assert "outside every image root" in errors[2]
    assert "symbolic link" in errors[3]
    assert np.linalg.norm(arrays["page_embeddings"][0]) > 0


@pytest.mark.parametrize("mode", ["vision", "text", "comp"])
def test_ablation_modes_use_one_encoder(tiny_checkpoint: Path, corpus: Path, mode: str) -> None:
    tasks = corpus_tasks(corpus)[:4]
    emb = make_embedder(tiny_checkpoint, [corpus / "images"], mode=mode)
    try:
        arrays, _ = emb.embed(tasks)
        prepared = [prepare_page(spec_of(t), (corpus / "images" / t.image).read_bytes(), t.image) for t in tasks]
        ref = reference_embed(emb.model, emb.tokenizer, prepared, mode)
    finally:
        emb.close()
    assert emb.identity.encoder_mode == mode
    mask = arrays["panel_mask"]
    np.testing.assert_allclose(arrays["panel_embeddings"][mask], ref["panel_embeddings"][mask], atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(arrays["page_embeddings"], ref["page_embeddings"], atol=2e-5, rtol=1e-4)


def test_fast_decode_stays_close_to_exact(tiny_checkpoint: Path, corpus: Path) -> None:
    tasks = corpus_tasks(corpus)[:8]
    exact = make_embedder(tiny_checkpoint, [corpus / "images"], fast_decode=False)
    fast = make_embedder(tiny_checkpoint, [corpus / "images"], fast_decode=True)
    try:
        a, _ = exact.embed(tasks)
        b, _ = fast.embed(tasks)
    finally:
        exact.close()
        fast.close()
    mask = a["panel_mask"]
    pa, pb = a["panel_embeddings"][mask], b["panel_embeddings"][mask]
    cos = (pa * pb).sum(1) / (np.linalg.norm(pa, axis=1) * np.linalg.norm(pb, axis=1))
    assert cos.min() >= 0.999
