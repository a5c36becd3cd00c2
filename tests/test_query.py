"""`comix-embed query` on stores made by the pipeline, and the search index's own pieces.

The stores: a complete one with failed pages, and one interrupted mid-job; the pieces: keyword
counts, streaming, top-k."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from comix_embed.cli import main
from comix_embed.common.errors import UsageError
from comix_embed.common.inputs.pages import PageSpec
from comix_embed.common.model.checkpoint import load_model
from comix_embed.common.model.preprocess import join_text, prepare_page
from comix_embed.common.model.tokenizer import load_tokenizer
from comix_embed.common.store.reading import open_committed
from comix_embed.common.store.schema import STATUS_FAILED, STATUS_FULL_PAGE, store_path
from comix_embed.tools.init_checkpoint import init_checkpoint
from comix_embed.tools.query_model import QueryEncoder
from comix_embed.tools.search import SearchIndex, TextIndex, top_k
from tests.cli import run_cli
from tests.typed import StoreArrays


def query(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`comix-embed query ARGV...` in this process (torch and the store stay warm between tests)."""
    code = main(["query", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def query_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    code, out, err = query(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def pages(pipeline_store: Path) -> dict[str, np.ndarray]:
    """The committed rows of the pipeline store, read by the project's reader, not the index."""
    ds = open_committed(store_path(pipeline_store))
    return {
        "page_id": np.asarray(ds["page_id"].values, dtype=object),
        "status": ds["status"].values,
        "page_text": np.asarray(ds["page_text"].values, dtype=object),
        "panel_embeddings": ds["panel_embeddings"].values,
        "panel_mask": ds["panel_mask"].values,
    }


def longest_word(page_text: str) -> str:
    """The longest word of 4+ letters of a stored page text ('' when none)."""
    words = re.findall(r"[A-Za-z]{4,}", join_text(json.loads(page_text)) if page_text else "")
    return max(words, key=len, default="")


def ok_ids(pages: dict[str, np.ndarray]) -> list[str]:
    return [str(p) for p, s in zip(pages["page_id"], pages["status"]) if s != STATUS_FAILED]


def failed_ids(pages: dict[str, np.ndarray]) -> set[str]:
    return {str(p) for p, s in zip(pages["page_id"], pages["status"]) if s == STATUS_FAILED}


def test_like_finds_the_page_itself_first(
    pipeline_store: Path, pages: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    target = ok_ids(pages)[5]
    proc = run_cli("query", "--zarr", str(pipeline_store), "--like", target, "--top-k", "3")
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[2]
    assert first.split()[:2] == ["1", "1.0000"] and target in first
    report = query_json(capsys, "--zarr", str(pipeline_store), "--like", target, "--top-k", "100")
    assert report["mode"] == "like" and report["results"][0]["page_id"] == target
    assert report["results"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    found = [r["page_id"] for r in report["results"]]
    assert sorted(found) == sorted(ok_ids(pages))  # every searchable page once, no failed page
    scores = [r["score"] for r in report["results"][1:]]
    assert scores == sorted(scores, reverse=True)


def test_query_prints_no_third_party_log_lines(pipeline_store: Path, pages: dict) -> None:
    """faiss says at INFO which CPU build it loads when imported (logger faiss.loader): the command
    line keeps other libraries at WARNING, so a user sees results, not that."""
    word = next(w for w in (longest_word(t) for t in pages["page_text"]) if w)
    proc = run_cli("query", "--zarr", str(pipeline_store), "--keyword", word.lower(), "--top-k", "3")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"keyword {word.lower()!r}: top ")
    assert "faiss" not in proc.stderr and "Loading" not in proc.stderr, proc.stderr
    loggers = re.findall(r"^[\d:.]+ [A-Z]+ (\S+): ", proc.stderr, re.MULTILINE)
    assert [name for name in loggers if name.split(".")[0] not in ("comix", "comix_embed")] == []


def test_like_accepts_a_pasted_windows_path(
    pipeline_store: Path, pages: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    target = ok_ids(pages)[2]
    pasted = "E:\\Comics\\" + target.upper().replace("/", "\\")
    report = query_json(capsys, "--zarr", str(pipeline_store), "--like", pasted, "--top-k", "1")
    assert report["results"][0]["page_id"] == target


def test_like_refuses_unknown_ambiguous_and_failed_pages(
    pipeline_store: Path, pages: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    store = str(pipeline_store)
    assert query(capsys, "--zarr", store, "--like", "no/such/page.json")[0] == 2
    code, _, err = query(capsys, "--zarr", store, "--like", "0001.json")
    assert code == 2 and "matches" in err
    code, _, err = query(capsys, "--zarr", store, "--like", sorted(failed_ids(pages))[0])
    assert code == 2 and "no embedding" in err


def test_keyword_finds_a_page_by_a_word_of_its_text(
    pipeline_store: Path, pages: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    row = next(i for i, s in enumerate(pages["status"]) if s != STATUS_FAILED and longest_word(pages["page_text"][i]))
    word = longest_word(pages["page_text"][row]).lower()
    report = query_json(capsys, "--zarr", str(pipeline_store), "--keyword", word, "--top-k", "100")
    found = {r["page_id"]: r for r in report["results"]}
    assert str(pages["page_id"][row]) in found
    assert word in found[str(pages["page_id"][row])]["snippet"].lower()
    for r in report["results"]:  # the score is the page's count of the word, case-insensitive
        i = list(pages["page_id"]).index(r["page_id"])
        assert r["score"] == join_text(json.loads(pages["page_text"][i])).lower().count(word)
    assert not failed_ids(pages) & set(found)


def test_text_query_ranks_as_by_hand(
    pipeline_store: Path, tiny_checkpoint: Path, pages: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    text = "superhero fighting villain"
    report = query_json(
        capsys, "--zarr", str(pipeline_store), "--text", text, "--checkpoint", str(tiny_checkpoint), "--top-k", "5"
    )
    results = report["results"]
    assert len(results) == 5 and all(-1.0 <= r["score"] <= 1.0 for r in results)
    # by hand: the query as one panel (zero image and composition), cosine with valid panels
    loaded = load_model(tiny_checkpoint)
    enc = load_tokenizer(None, tiny_checkpoint).tokenizer([text], truncation=True, max_length=128, return_tensors="pt")
    size = loaded.config.vit["image_size"]
    with torch.no_grad():
        q = loaded.model.panel_vectors(
            "fused", torch.zeros(1, 3, size, size), enc["input_ids"], enc["attention_mask"], torch.zeros(1, 7)
        )
    query = q[0].double().numpy()
    emb = pages["panel_embeddings"].astype(np.float64)
    cos = emb @ query / (np.linalg.norm(emb, axis=-1) * np.linalg.norm(query) + 1e-30)
    valid = pages["panel_mask"] & (pages["status"] != STATUS_FAILED)[:, None]
    best = np.where(valid, cos, -np.inf).max(axis=1)
    order = np.argsort(-best, kind="stable")[:5]
    assert [r["page_id"] for r in results] == [str(pages["page_id"][i]) for i in order]
    assert [r["score"] for r in results] == pytest.approx(best[order].tolist(), abs=1e-5)
    assert [r["panel"] for r in results] == [int(np.argmax(np.where(valid[i], cos[i], -np.inf))) for i in order]


def test_text_query_with_old_spellings_and_panels(
    pipeline_store: Path, tiny_checkpoint: Path, pages: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    report = query_json(
        capsys,
        "--zarr_path",
        str(pipeline_store),
        "--query",
        "the vault",
        "--checkpoint",
        str(tiny_checkpoint),
        "--top_k",
        "30",
        "--panels",
    )
    assert len(report["results"]) == 30 and report["panels"]
    assert not failed_ids(pages) & {r["page_id"] for r in report["results"]}
    for r in report["results"]:
        assert pages["panel_mask"][r["row"], r["panel"]]


def test_text_query_needs_the_stores_checkpoint(
    pipeline_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = query(capsys, "--zarr", str(pipeline_store), "--text", "hello")
    assert code == 2 and "--checkpoint" in err
    other = tmp_path / "other.pt"
    init_checkpoint(other, size="tiny", seed=1)
    code, _, err = query(capsys, "--zarr", str(pipeline_store), "--text", "hello", "--checkpoint", str(other))
    assert code == 2 and "did not make this store" in err


def full_page_rows(pipeline_store: Path) -> list[int]:
    """Committed rows embedded as one full-page panel (their DataSpec has no panels)."""
    ds = open_committed(store_path(pipeline_store))
    return [int(r) for r in np.flatnonzero(ds["status"].values == STATUS_FULL_PAGE)]


def stored_image(pipeline_store: Path, pipeline_corpus: Path, row: int) -> Path:
    """The image of a row, from the store's own record of its root and relative path."""
    group = StoreArrays(store_path(pipeline_store))
    assert int(group["image_root"][row]) == 0  # the pipeline ran with one image root
    return pipeline_corpus / "images" / str(group["image_path"][row])


def test_image_query_ranks_the_page_of_that_image_first(
    pipeline_store: Path,
    pipeline_corpus: Path,
    tiny_checkpoint: Path,
    pages: dict,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rows = full_page_rows(pipeline_store)
    assert rows, "the sample corpus has pages without panels (covers)"
    ckpt = str(tiny_checkpoint)
    for row in rows:
        image = stored_image(pipeline_store, pipeline_corpus, row)
        report = query_json(capsys, "--zarr", str(pipeline_store), "--image", str(image), "--checkpoint", ckpt)
        assert report["mode"] == "image" and report["query"] == str(image)
        first = report["results"][0]
        assert first["page_id"] == pages["page_id"][row] and first["panel"] is None
        assert first["score"] >= 0.999
        assert {r["page_id"] for r in report["results"]} <= set(ok_ids(pages))
        panels = query_json(
            capsys, "--zarr", str(pipeline_store), "--image", str(image), "--checkpoint", ckpt, "--panels"
        )
        assert (panels["results"][0]["row"], panels["results"][0]["panel"]) == (row, 0)
        assert panels["results"][0]["score"] >= 0.999


def test_image_query_compares_the_fused_page_vector_with_page_embeddings(
    pipeline_store: Path, pipeline_corpus: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Scores are cosines with page_embeddings of an image embedded as a worker embeds a page
    without panels: the image of a page with panels is compared here, by hand."""
    ds = open_committed(store_path(pipeline_store))
    row = int(np.flatnonzero(ds["status"].values == 1)[0])
    image = stored_image(pipeline_store, pipeline_corpus, row)
    report = query_json(
        capsys,
        "--zarr",
        str(pipeline_store),
        "--image",
        str(image),
        "--checkpoint",
        str(tiny_checkpoint),
        "--top-k",
        "100",
    )
    loaded, tokenizer = load_model(tiny_checkpoint), load_tokenizer(None, tiny_checkpoint)
    page = prepare_page(PageSpec(image=image.name), image.read_bytes(), image.name, fast_decode=True)
    assert page.status == STATUS_FULL_PAGE and len(page.crops) == 1
    ids = tokenizer.tokenizer(page.texts, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        crop = torch.from_numpy(page.crops).permute(0, 3, 1, 2).float() / 255.0
        panel = loaded.model.panel_vectors(
            "fused", crop, ids["input_ids"], ids["attention_mask"], torch.from_numpy(page.comp)
        )
        vector, _, _ = loaded.model.pool(panel[None], torch.ones(1, 1, dtype=torch.bool))
    q = vector[0].double().numpy()
    emb = ds["page_embeddings"].values.astype(np.float64)
    cos = emb @ q / (np.linalg.norm(emb, axis=-1) * np.linalg.norm(q) + 1e-30)
    for r in report["results"]:
        assert r["score"] == pytest.approx(cos[r["row"]], abs=1e-5)
    searchable = np.isin(ds["status"].values, (1, STATUS_FULL_PAGE))
    assert len(report["results"]) == int(searchable.sum())


def test_image_query_refusals(
    pipeline_store: Path,
    pipeline_corpus: Path,
    tiny_checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = str(pipeline_store)
    image = str(stored_image(pipeline_store, pipeline_corpus, full_page_rows(pipeline_store)[0]))
    code, _, err = query(capsys, "--zarr", store, "--image", image)
    assert code == 2 and "--checkpoint" in err
    other = tmp_path / "other.pt"
    init_checkpoint(other, size="tiny", seed=1)
    code, _, err = query(capsys, "--zarr", store, "--image", image, "--checkpoint", str(other))
    assert code == 2 and "did not make this store" in err
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("not a picture")
    code, _, err = query(capsys, "--zarr", store, "--image", str(not_image), "--checkpoint", str(tiny_checkpoint))
    assert code == 2 and "not a readable image" in err and "notes.jpg" in err
    code, _, err = query(capsys, "--zarr", store, "--image", str(tmp_path / "absent.jpg"), "--checkpoint", str(other))
    assert code == 2 and "absent.jpg" in err


def test_encoder_modes_refuse_queries_they_cannot_see(tiny_checkpoint: Path) -> None:
    loaded, tokenizer = load_model(tiny_checkpoint), load_tokenizer(None, tiny_checkpoint)
    refused = {
        mode: (
            QueryEncoder(loaded, tokenizer, mode).refusal("text"),
            QueryEncoder(loaded, tokenizer, mode).refusal("image"),
        )
        for mode in ("fused", "vision", "text", "comp")
    }
    assert refused["fused"] == (None, None)
    assert refused["vision"][0] and refused["vision"][1] is None
    assert refused["text"][0] is None and refused["text"][1]
    assert refused["comp"][0] and refused["comp"][1]
    with pytest.raises(UsageError, match="vision tower"):
        QueryEncoder(loaded, tokenizer, "text").image(b"", "x.jpg")


def test_interrupted_store_searches_committed_rows_only(
    interrupted_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = store_path(interrupted_store)
    ds = open_committed(store)
    committed = [str(p) for p in ds["page_id"].values]
    registered = [str(p) for p in StoreArrays(store)["page_id"][:]]
    assert 0 < len(committed) < len(registered)
    written_not_committed = registered[len(committed) + 4]  # batch 3 is written, the prefix stops at 2
    code, _, err = query(capsys, "--zarr", str(interrupted_store), "--like", written_not_committed)
    assert code == 2 and "not among" in err
    report = query_json(capsys, "--zarr", str(interrupted_store), "--like", committed[0], "--top-k", "100")
    assert report["results"][0]["page_id"] == committed[0]
    assert {r["page_id"] for r in report["results"]} <= set(committed)
    row = next(i for i, t in enumerate(ds["page_text"].values) if longest_word(t))
    report = query_json(
        capsys,
        "--zarr",
        str(interrupted_store),
        "--keyword",
        longest_word(ds["page_text"].values[row]),
        "--top-k",
        "100",
    )
    assert committed[row] in {r["page_id"] for r in report["results"]}
    assert {r["page_id"] for r in report["results"]} <= set(committed)


def test_streamed_panels_give_the_same_answer(pipeline_store: Path) -> None:
    in_memory = SearchIndex.load(pipeline_store)
    streamed = SearchIndex.load(pipeline_store, panel_memory=0)
    rng = np.random.default_rng(0)
    for _ in range(3):
        q = rng.standard_normal(in_memory.store.dim).astype(np.float32)
        q /= np.linalg.norm(q)
        for per_page in (True, False):
            a, b = streamed.panels(q, 7, per_page), in_memory.panels(q, 7, per_page)
            assert [(h.row, h.panel) for h in a] == [(h.row, h.panel) for h in b]
            assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-6)
    assert in_memory.panel_count and streamed.panel_count is None


def test_text_index_counts_as_str_count() -> None:
    texts = ["POW! The vault, the VAULT.", "", "Batman | combat bat", "café au lait | CAFÉ", "the the the"]
    index = TextIndex(texts)
    for q in ("the", "vault", "bat", "at", "café", "pow!", "| com", "a", "zzz", "e the"):
        assert index.counts(q).tolist() == [t.lower().count(q.lower()) for t in texts], q


def test_top_k_breaks_ties_by_index() -> None:
    scores = np.array([0.5, 0.9, 0.5, 0.9, 0.1, 0.5], dtype=np.float32)
    assert top_k(scores, 4).tolist() == [1, 3, 0, 2]
    assert top_k(scores, 10).tolist() == [1, 3, 0, 2, 5, 4]


def test_id_lists_every_page_whose_id_holds_a_fragment_page_by_page(
    capsys: pytest.CaptureFixture[str], pipeline_store: Path
) -> None:
    """`--id` (their `--query_page_substr`): every committed page whose id holds the fragment,
    case-insensitively with `\\` read as `/`, in row order, `--top-k` at a time from `--offset`."""
    ids = [str(v) for v in open_committed(store_path(pipeline_store))["page_id"].values]
    fragment = "JPG4CBZ\\"  # upper case, a Windows separator: every page under such a folder
    want = [r for r, pid in enumerate(ids) if "jpg4cbz/" in pid.lower()]
    assert len(want) > 5
    seen: list[int] = []
    for offset in range(0, len(want), 4):
        answer = query_json(
            capsys, "--zarr", str(pipeline_store), "--id", fragment, "--top-k", "4", "--offset", str(offset)
        )
        assert answer["matches"] == len(want) and answer["offset"] == offset and answer["mode"] == "id"
        assert [r["rank"] for r in answer["results"]] == list(range(offset + 1, offset + 1 + len(answer["results"])))
        seen += [r["row"] for r in answer["results"]]
    assert seen == want
    old = query_json(capsys, "--zarr", str(pipeline_store), "--query_page_substr", ids[3][-12:], "--top-k", "50")
    assert 3 in [r["row"] for r in old["results"]] and old["matches"] >= 1
    none = query_json(capsys, "--zarr", str(pipeline_store), "--id", "no-such-fragment")
    assert none["matches"] == 0 and none["results"] == []
