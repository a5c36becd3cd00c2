"""What the messages, model identities, kept task payloads and every other record decode, and what they refuse.

Messages are declared once (common/messages.py), model identities in common/model/identity.py, kept task
payloads in common/store/jobs.py, and every other record that crosses a process or a file beside its
owner (manifests, store attributes, the audit log, the leases' records in Redis, worker settings,
the index meta, the status report): each test says what decodes, that what the code wrote before
still decodes, and what is refused with which words (the field at fault)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import msgspec
import pytest

from comix_embed.common import config
from comix_embed.common.broker.batch_lease import BatchLeaseInfo, PageMark
from comix_embed.common.broker.deliveries import GivenUp
from comix_embed.common.broker.writer_lease import WriterLeaseHolder
from comix_embed.common.errors import UsageError
from comix_embed.common.inputs.pages import PageTask
from comix_embed.common.messages import (
    TASK_FORMAT,
    MalformedMessage,
    TaskPayload,
    decode_json,
    decode_task,
    encode_json,
)
from comix_embed.common.model.identity import (
    ModelMismatch,
    check_same_model,
    identity_of,
    make_identity,
    queue_name,
    tokenizers_match,
)
from comix_embed.common.model.tokenizer import load_tokenizer, tokenizer_dir_beside
from comix_embed.common.store.attributes import ManifestCheckpoint, StoreAttributes
from comix_embed.common.store.audit_log import AuditRecord
from comix_embed.common.store.jobs import iter_tasks, load_jobs, read_task
from comix_embed.common.store.manifests import INFLIGHT_NAME, inflight_record, read_manifest
from comix_embed.common.store.results import BatchResult
from comix_embed.common.store.retries import RETRY_BASE, retried_rows, scan_retry_manifests
from comix_embed.consumers.preflight import PreflightReport
from comix_embed.consumers.settings import WorkerSettings
from comix_embed.producer.jobs import write_tasks
from comix_embed.producer.status import StatusReport
from comix_embed.run import RunStats
from comix_embed.tools.diagnose.audit import read_audit
from comix_embed.tools.search.layout import read_meta, store_identity
from comix_embed.writer.audit import verbose_line
from comix_embed.writer.lease import read_record
from comix_embed.writer.manifests import make_manifest
from comix_embed.writer.retry import RetryInflight, make_retry_manifest
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


# --- records that cross a process or a file: each decodes, reads what the code before wrote, and
# refuses a malformed one naming the field ---

# A batch manifest as the writer wrote it before its record was declared (json.dumps of a dict),
# and one written before the writer lease (no token) and before `job` and `statuses`.
OLD_MANIFEST = (
    '{"batch_id": 2, "start_idx": 16, "end_idx": 23, "num_pages": 8, "timestamp": "2026-01-02T03:04:05Z", '
    '"page_ids": ["a", "b", "c", "d", "e", "f", "g", "h"], "job": "job_000001", "statuses": {"ok": 7, "failed": 1}, '
    '"token": 3}'
)
OLDEST_MANIFEST = '{"batch_id": 0, "start_idx": 0, "end_idx": 0, "num_pages": 1, "page_ids": ["a"]}'


def test_manifests_decode_old_ones_too_and_name_the_field_at_fault(tmp_path: Path) -> None:
    path = tmp_path / "batch_000002.json"
    path.write_text(OLD_MANIFEST)
    manifest, problem = read_manifest(path, 2)
    assert problem == "" and manifest is not None
    assert (manifest.rows(), manifest.job, manifest.statuses, manifest.token) == (
        (16, 24),
        "job_000001",
        {"ok": 7, "failed": 1},
        3,
    )
    path.write_text(OLDEST_MANIFEST)
    oldest, _ = read_manifest(path, 0)
    assert oldest is not None and (oldest.job, oldest.statuses, oldest.token, oldest.timestamp) == ("", {}, None, "")
    # what the writer writes now: the same fields, the token left out when there is none
    written = make_manifest(2, 16, list("abcdefgh"), "job_000001", {"ok": 8})
    assert list(msgspec.to_builtins(written)) == [
        "batch_id",
        "start_idx",
        "end_idx",
        "num_pages",
        "timestamp",
        "page_ids",
        "job",
        "statuses",
    ]
    path.write_text(OLD_MANIFEST.replace('"page_ids": ["a"', '"page_ids": [1'))
    assert read_manifest(path, 2) == (
        None,
        "batch_000002.json is unreadable: Expected `str`, got `int` - at `$.page_ids[0]`",
    )
    path.write_text(OLD_MANIFEST)
    assert (
        read_manifest(path, 3)[1]
        == "batch_000002.json contradicts itself (batch_id, start_idx, end_idx, num_pages, page_ids)"
    )


def test_the_inflight_record_and_retry_records_decode_and_name_the_field_at_fault(tmp_path: Path) -> None:
    folder = tmp_path / "manifest"
    folder.mkdir()
    (folder / INFLIGHT_NAME).write_text('{"batches": [[3, 24, 32], [4, 32, 40]]}')
    assert inflight_record(tmp_path) == ([(3, 24, 32), (4, 32, 40)], None)
    (folder / INFLIGHT_NAME).write_text('{"batches": [[3, 24]]}')
    assert "unreadable: Expected `array` of length 3 - at `$.batches[0]`" in str(inflight_record(tmp_path)[1])
    old = {
        "batch_id": RETRY_BASE + 1,
        "job": "retry_000001",
        "timestamp": "2026-01-02T03:04:05Z",
        "rows": [5, 9],
        "page_ids": ["p5", "p9"],
        "row_statuses": ["ok", "failed"],
        "skipped_rows": [7],
        "statuses": {"ok": 1, "failed": 1},
    }
    (folder / "retry_000001.json").write_text(json.dumps(old))
    found, bad = scan_retry_manifests(tmp_path)
    assert bad == [] and retried_rows(found) == {5: "ok", 9: "failed"} and found[RETRY_BASE + 1].token is None
    assert (
        msgspec.to_builtins(make_retry_manifest(RETRY_BASE + 1, "retry_000001", [5], ["p5"], ["ok"], [7], 2))["token"]
        == 2
    )
    (folder / "retry_000001.json").write_text(json.dumps({**old, "skipped_rows": ["7"]}))
    assert scan_retry_manifests(tmp_path) == (
        {},
        ["retry_000001.json is unreadable: Expected `int`, got `str` - at `$.skipped_rows[0]`"],
    )
    saved = decode_json(
        '{"batch_id": 1000000001, "rows": [5], "arrays": {"status": [2]}}', RetryInflight, "retry_inflight.json"
    )
    assert (saved.rows, saved.arrays["status"]) == ([5], [2])
    with pytest.raises(MalformedMessage, match=r"retry_inflight.json: Object missing required field `rows`"):
        decode_json('{"batch_id": 1, "arrays": {}}', RetryInflight, "retry_inflight.json")


def test_the_store_attributes_decode_and_name_the_field_at_fault() -> None:
    job = {
        "job_id": "job_000001",
        "list_path": "/lists/a.txt",
        "list_sha256": "0" * 64,
        "created": "2026-01-02T03:04:05Z",
        "start_row": 0,
        "end_row": 20,
        "batch_size": 8,
        "first_batch": 0,
        "num_batches": 3,
    }
    attrs = {
        "model_name": "CLOSURE-Lite-Simple",
        "committed_rows": 16,
        "registered_rows": 20,
        "jobs": [job],
        "manifest_checkpoint": {"batches": 2, "rows": 16, "statuses": {"ok": 16}},
        "coordinates": "source",
    }
    kept = StoreAttributes.of(attrs)
    assert (kept.committed_rows, kept.job_ids(), kept.jobs[0].end_row) == (16, ["job_000001"], 20)
    assert kept.manifest_checkpoint == ManifestCheckpoint(batches=2, rows=16, statuses={"ok": 16})
    assert StoreAttributes.of({"committed_rows": 4}).manifest_checkpoint is None  # a store from before the checkpoint
    with pytest.raises(
        MalformedMessage, match=r"root attributes: Object missing required field `end_row` - at `\$.jobs\[0\]`"
    ):
        StoreAttributes.of({**attrs, "jobs": [{k: v for k, v in job.items() if k != "end_row"}]})
    with pytest.raises(MalformedMessage, match=r"Expected `int`, got `str` - at `\$.committed_rows`"):
        StoreAttributes.of({**attrs, "committed_rows": "16"})


def test_audit_lines_decode_as_written_before_and_name_the_field_at_fault(tmp_path: Path) -> None:
    old = {
        "row": 17019,
        "page_id": "book/0022.json",
        "json": "/data/specs/0022.json",
        "batch": 3,
        "job": "job_000001",
        "status": "ok",
        "error": "",
        "mask_sum": 6,
        "emb_l2": 2.439,
        "time": "2026-01-02T03:04:05.678Z",
    }
    record = AuditRecord.decode(json.dumps(old, ensure_ascii=False))
    assert (record.row, record.manifest_path, record.retry) == (17019, "/data/specs/0022.json", False)
    assert verbose_line(record) == "[PAGE] json=0022.json page_id=book/0022.json idx=17019 mask_sum=6 emb_l2=2.439"
    assert json.loads(record.line()) == old  # the same keys; `retry` only on a retry's records
    assert json.loads(AuditRecord.decode(json.dumps({**old, "retry": True})).line())["retry"] is True
    with pytest.raises(MalformedMessage, match=r"audit record: Expected `int`, got `str` - at `\$.mask_sum`"):
        AuditRecord.decode(json.dumps({**old, "mask_sum": "six"}))
    audit = tmp_path / "audit.jsonl"
    audit.write_text(json.dumps(old) + "\n" + '{"row": 3, "page_id"\n')  # the last line torn by a crash
    records, unreadable = read_audit(audit)
    assert list(records) == [17019] and unreadable == 1


def test_batch_lease_records_in_redis_decode_and_name_the_field_at_fault() -> None:
    # the form the code before kept under a delivery's token (json.dumps, token and expiry apart)
    old = '{"store": "s", "batch": 4, "job": "job_000001", "queue": "comix.embed.k", "task_id": "t", "holder": "w@h", "pid": 7, "since": 1.5}'
    info = BatchLeaseInfo.decode("tok", old, expires=9.0)
    assert (info.token, info.batch, info.holder, info.expires) == ("tok", 4, "w@h", 9.0)
    assert json.loads(info.to_json()) == json.loads(old)  # token and expiry stay out of the JSON
    with pytest.raises(
        MalformedMessage, match=r"batch lease of delivery tok: Expected `int`, got `str` - at `\$.batch`"
    ):
        BatchLeaseInfo.decode("tok", old.replace('"batch": 4', '"batch": "four"'))
    mark = decode_json('{"row": 12, "page_id": "p", "stage": "decode"}', PageMark, "page mark")
    assert (mark.row, mark.stage) == (12, "decode")
    with pytest.raises(MalformedMessage, match=r"Object missing required field `stage`"):
        decode_json('{"row": 12, "page_id": "p"}', PageMark, "page mark")
    given = decode_json('{"reason": "the batch was lost 3 times", "lost": 3}', GivenUp, "given up")
    assert (given.reason, given.lost) == ("the batch was lost 3 times", 3)
    with pytest.raises(MalformedMessage, match=r"Expected `str`, got `null` - at `\$.reason`"):
        decode_json('{"reason": null}', GivenUp, "given up")


def test_writer_lease_records_decode_and_name_the_field_at_fault(tmp_path: Path) -> None:
    # as the writer's Lua script (cjson) writes the holder: any key order
    holder = WriterLeaseHolder.parse('{"since":"2026-01-02T03:04:05Z","pid":31369,"token":1,"host":"vm"}')
    assert str(holder) == "host vm, pid 31369, token 1, since 2026-01-02T03:04:05Z"
    with pytest.raises(MalformedMessage, match=r"writer lease holder: Expected `int`, got `str` - at `\$.pid`"):
        WriterLeaseHolder.parse('{"since":"x","pid":"31369","token":1,"host":"vm"}')
    token_file = tmp_path / "writer.token.json"
    token_file.write_text(
        '{"token": 4, "host": "vm", "pid": 5, "since": "2026-01-02T03:04:05Z", "accepted": [[0, 3], [5, 5]]}'
    )
    record = read_record(tmp_path)
    assert record is not None and record.token == 4 and record.accepts(5) and not record.accepts(4)
    assert record.holder() == WriterLeaseHolder(token=4, host="vm", pid=5, since="2026-01-02T03:04:05Z")
    token_file.write_text('{"token": 4, "host": "vm", "pid": 5, "since": "x", "accepted": [[0]]}')
    with pytest.raises(UsageError, match=r"writer.token.json is unreadable: .* - at `\$.accepted\[0\]`; it records"):
        read_record(tmp_path)


def test_worker_settings_travel_whole_and_a_bad_value_names_its_field(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = WorkerSettings(checkpoint="/m/ckpt.pt", image_roots=["/img"], decode_threads=2, model_key="k")
    monkeypatch.setenv(*next(iter(settings.to_env().items())))
    assert WorkerSettings.from_env() == settings
    old = {**dataclass_like(settings), "tokenizer": None}  # as json.dumps(asdict(settings)) wrote them
    monkeypatch.setenv(config.WORKER_SETTINGS.name, json.dumps(old))
    assert WorkerSettings.from_env() == settings
    monkeypatch.setenv(config.WORKER_SETTINGS.name, json.dumps({**old, "decode_threads": "two"}))
    with pytest.raises(
        MalformedMessage, match=r"COMIX_WORKER_SETTINGS: Expected `int`, got `str` - at `\$.decode_threads`"
    ):
        WorkerSettings.from_env()
    report = PreflightReport.decode(
        json.dumps(
            {
                "checkpoint": "/m/ckpt.pt",
                "identity": synthetic.model_info(),
                "model_key": "k",
                "device": "cpu",
                "gpus": 0,
            }
        )
    )
    assert report.identity.checkpoint_sha256 == synthetic.CHECKPOINT_A and report.identity.tokenizer_legacy == ""
    with pytest.raises(MalformedMessage, match=r"worker preflight report: .* - at `\$.gpus`"):
        PreflightReport.decode(json.dumps({**msgspec.to_builtins(report), "gpus": "none"}))


def dataclass_like(settings: WorkerSettings) -> dict:
    return {f: getattr(settings, f) for f in settings.__struct_fields__}


def test_the_index_meta_decodes_and_a_broken_one_is_refused(tmp_path: Path) -> None:
    segment = {"file": "pages_000001.f16", "count": 3}
    part = {"type": "flat", "lists": 0, "trained_on": 3, "entries": 3, "live": 3, "segments": [segment]}
    store = {
        "created": "2026",
        "checkpoint_sha256": "a",
        "tokenizer": "t",
        "encoder_mode": "fused",
        "embedding_dim": 16,
        "max_panels": 12,
    }
    meta = {
        "format": 1,
        "generation": 1,
        "store": store,
        "store_path": "/x.zarr",
        "rows": 3,
        "built": "2026-01-02T03:04:05Z",
        "parts": {
            "pages": part,
            "panels": {**part, "segments": []},
            "text": {"segments": [{"file": "text_000001", "count": 3}]},
        },
    }
    generation = tmp_path / "gen_000001"
    generation.mkdir()
    (generation / "meta.json").write_text(json.dumps(meta, indent=1))  # as the index builder wrote it before
    read = read_meta(generation)
    assert read.store == store_identity({**store, "model_name": "ignored"}) and read.parts.pages.segments[0].count == 3
    (generation / "meta.json").write_text(json.dumps({**meta, "rows": "3"}))
    with pytest.raises(UsageError, match=r"meta.json: Expected `int`, got `str` - at `\$.rows`"):
        read_meta(generation)


def test_the_status_report_keeps_its_json_keys() -> None:
    report = StatusReport(
        store="s",
        jobs=["job_000001"],
        models={},
        store_model=None,
        registered_pages=8,
        committed_rows=8,
        pages_with_manifest=8,
        failed_pages=0,
        owed_batches=0,
        retry_rounds=0,
        retried_pages=0,
        retried_embedded=0,
        owed_retry_batches=0,
        pages_per_s=None,
        eta_s=None,
        broker_error="redis://x: refused",
    )
    shown = json.loads(encode_json(report))
    assert shown["store_model"] is None and shown["broker_error"] == "redis://x: refused"
    assert "writer" not in shown and "holders_gone" not in shown  # the broker's side is absent, not null
    report.broker_error = msgspec.UNSET
    report.writer, report.lost_deliveries = None, {3: 1}
    shown = json.loads(encode_json(report))
    assert shown["writer"] is None and shown["lost_deliveries"] == {"3": 1} and "broker_error" not in shown
    stats = decode_json('{"pages": 8, "seconds": 2.0, "pages_per_s": 4.0, "workers": 1}', RunStats, "stats")
    assert stats.pages_per_s == 4.0
