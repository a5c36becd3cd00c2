"""What the messages, model identities and kept task payloads decode, and what they refuse.

Messages are declared once (common/messages.py), model identities in common/identity.py, kept task
payloads in common/jobs.py: each test says what decodes, what is refused and with which words."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import msgspec
import pytest

from comix_embed.common.inputs.pages import PageTask
from comix_embed.common.messages import TASK_FORMAT, MalformedMessage, TaskPayload, decode_task
from comix_embed.common.model.identity import (
    ModelMismatch,
    check_same_model,
    identity_of,
    make_identity,
    queue_name,
    tokenizers_match,
)
from comix_embed.common.model.tokenizer import load_tokenizer, tokenizer_dir_beside
from comix_embed.common.store.jobs import iter_tasks, load_jobs, read_task
from comix_embed.common.store.results import BatchResult
from comix_embed.producer.jobs import write_tasks
from tests import synthetic


def test_a_tokenizer_is_its_content_not_its_folder(tiny_checkpoint: Path, tmp_path: Path) -> None:
    original = load_tokenizer(None, tiny_checkpoint)
    copy = tmp_path / "elsewhere"
    shutil.copytree(tokenizer_dir_beside(tiny_checkpoint), copy)
    resaved = tmp_path / "resaved"
    original.tokenizer.save_pretrained(str(resaved))
    only_json = tmp_path / "only-json"  # one file layout instead of the other
    only_json.mkdir()
    shutil.copy(resaved / "tokenizer.json", only_json / "tokenizer.json")
    identities = {load_tokenizer(d).identity for d in (copy, resaved, only_json)}
    assert identities == {original.identity} and original.identity.startswith("content-sha256:")
    assert load_tokenizer(copy).legacy_identity != original.legacy_identity  # the old form held the folder
    changed = tmp_path / "changed"
    shutil.copytree(copy, changed)
    tok = json.loads((changed / "tokenizer.json").read_text())
    tok["model"]["merges"] = tok["model"]["merges"][:-1]
    (changed / "tokenizer.json").write_text(json.dumps(tok))
    (changed / "merges.txt").write_text("\n".join((changed / "merges.txt").read_text().splitlines()[:-1]) + "\n")
    assert load_tokenizer(changed).identity != original.identity


def test_one_function_decides_same_model_and_reads_the_old_tokenizer_form() -> None:
    new = make_identity("a" * 64, 32, "fused", "content-sha256:" + "1" * 64, "tok sha256:0123456789abcdef")
    old_store = {**new.to_dict(), "tokenizer": "other-folder sha256:0123456789abcdef"}
    assert check_same_model(old_store, new, what="job") == new  # same files, another folder: same model
    assert tokenizers_match(identity_of(old_store), new)
    with pytest.raises(ModelMismatch, match=r"tokenizer: store 'other-folder sha256:ffff"):
        check_same_model({**old_store, "tokenizer": "other-folder sha256:ffff"}, new, what="job")
    with pytest.raises(ModelMismatch, match="encoder_mode") as info:
        check_same_model(new, make_identity("a" * 64, 32, "vision", new.tokenizer), what="result of batch 3")
    assert "the result of batch 3 with checkpoint" in str(info.value)
    with pytest.raises(ModelMismatch, match="lacks checkpoint_sha256"):
        identity_of({k: v for k, v in new.to_dict().items() if k != "checkpoint_sha256"})
    assert queue_name(new) == queue_name(make_identity("a" * 64, 32, "fused", new.tokenizer))
    assert queue_name(new) != queue_name(make_identity("b" * 64, 32, "fused", new.tokenizer))


def test_a_malformed_task_is_refused_with_the_field_at_fault() -> None:
    page = PageTask(row=3, page_id="p").__dict__
    good = {"job": "job_000001", "batch_id": 0, "store_id": "s", "pages": [page]}
    assert decode_task(good).v == 1 and decode_task(good).model is None  # format 1 still reads
    with pytest.raises(MalformedMessage, match=r"task payload: Expected `int`, got `str` - at `\$.pages\[0\].row`"):
        decode_task({**good, "pages": [{**page, "row": "three"}]})
    with pytest.raises(MalformedMessage, match="missing required field `store_id`"):
        decode_task({k: v for k, v in good.items() if k != "store_id"})
    with pytest.raises(MalformedMessage, match=f"task format {TASK_FORMAT + 1} is newer than this worker reads"):
        decode_task({**good, "v": TASK_FORMAT + 1})
    assert decode_task({**good, "added_later": 1}).batch_id == 0  # unknown fields are ignored


def test_results_round_trip_and_refuse_bad_arrays(tmp_path: Path) -> None:
    job, _ = synthetic.plan(tmp_path, synthetic.make_pages(8), 8)
    result = synthetic.make_result(job, 0, synthetic.model_info())
    back = BatchResult.from_bytes(result.to_bytes())
    assert back.arrays["page_embeddings"].tobytes() == result.arrays["page_embeddings"].tobytes()
    assert back.arrays["text_content"].tolist() == result.arrays["text_content"].tolist()
    raw = msgspec.msgpack.decode(result.to_bytes())
    raw["arrays"]["status"]["data"] = b"\x01"  # 1 byte for 8 rows
    with pytest.raises(MalformedMessage, match="batch result 0: array status: cannot reshape"):
        BatchResult.from_bytes(msgspec.msgpack.encode(raw))


def test_jobs_keep_their_payloads_and_old_job_files_still_load(tmp_path: Path) -> None:
    job, _ = synthetic.plan(tmp_path, synthetic.make_pages(20), 8)
    payloads = [
        TaskPayload(
            v=TASK_FORMAT,
            job=job.job_id,
            batch_id=b,
            store_id="s",
            pages=[PageTask(row=r, page_id=job.page(r).page_id) for r in range(start, end)],
        )
        for b, start, end in job.batches()
    ]
    assert read_task(tmp_path, job, 1) is None and iter_tasks(tmp_path, job) is None
    write_tasks(tmp_path, job, payloads)
    assert read_task(tmp_path, job, 2) == payloads[2] and read_task(tmp_path, job, 0) == payloads[0]
    assert list(iter_tasks(tmp_path, job) or []) == payloads
    with pytest.raises(KeyError):
        read_task(tmp_path, job, 3)
    header = json.loads((tmp_path / "jobs" / "job_000001.json").read_text())
    assert header["format"] == 3 and header["model"] is None  # synthetic jobs are planned unbound
    assert header["pages"] == [] and header["num_pages"] == len(job.pages)  # the pages have their own file
    (loaded,) = load_jobs(tmp_path)
    assert loaded.pages == [] and loaded.batches() == job.batches()  # the header only
    assert loaded.page_slice(9, 12) == job.pages[9:12] and loaded.page(19) == job.pages[19]
    assert loaded.all_pages() == job.pages
    old = {**header, "pages": [msgspec.to_builtins(p) for p in job.pages]}
    del old["format"], old["model"], old["num_pages"]  # a job file of format 1: pages inline
    (tmp_path / "jobs" / "job_000001.json").write_text(json.dumps(old))
    (loaded,) = load_jobs(tmp_path)
    assert loaded.format == 1 and loaded.pages == job.pages and loaded.batches() == job.batches()
    assert loaded.page(19) == job.pages[19]
    (tmp_path / "jobs" / "job_000001.json").write_text(json.dumps({**old, "batch_size": "eight"}))
    with pytest.raises(Exception, match=r"job_000001.json: Expected `int`, got `str` - at `\$.batch_size`"):
        load_jobs(tmp_path)
