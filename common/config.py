"""Every setting of the system in one place.

Constants describe the model and the store contract (docs/model.md, docs/store.md) and
must not vary between processes. Deployment settings (broker URL, credentials, bounds) come from
the environment, so that the same values reach the producer, the workers, the writer and Flower
(mismatched visibility timeouts on one Redis cause redeliveries).
Each COMIX_* variable is declared here once, with its rule, through the checked readers of
common/environment.py. Every command calls `check()` first: a setting that cannot work stops it
with a message naming the variable (exit status 2), instead of failing later, elsewhere, or never.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit

from comix_embed.common import environment
from comix_embed.common.errors import UsageError

# --- model and page inputs (docs/model.md) ---
MAX_PANELS = 12
IMAGE_SIZE = 224
TEXT_MAX_TOKENS = 128
TEXT_KEYS = ("dialogue", "narration", "sfx")
TEXT_JOINER = " | "
ATTENTION_TEMPERATURE = 0.1
ENCODER_MODES = ("fused", "vision", "text", "comp")
MODEL_NAME = "CLOSURE-Lite-Simple"
# A page larger than this many pixels is refused as a decompression bomb (real scans are ~4-6 MP).
MAX_IMAGE_PIXELS = environment.integer("COMIX_MAX_IMAGE_PIXELS", 64_000_000, at_least=1).get()

# --- store (docs/store.md) ---
STORE_NAME = "combined_embeddings.zarr"
MANIFEST_GROUP = "manifest"
SCHEMA_VERSION = 1
# Chunking along page_id (docs/store.md, "Chunks, shards and compression"): at most a few thousand
# files per array at 1.2M pages, and a committed region rewritten only while its shard or chunk fills.
# The embedding arrays: chunks of CHUNK_ROWS rows, packed in shards of SHARD_ROWS rows (one file).
CHUNK_ROWS = 64
SHARD_ROWS = 1024
# The other result arrays: one chunk per SHARD_ROWS rows. The writer commits in runs cut at
# multiples of SHARD_ROWS (writer/service.py), so a shard or chunk is written whole when it can be.
# The page columns written at registration (page_id, paths): chunks of PAGE_COLUMN_ROWS rows.
PAGE_COLUMN_ROWS = 16384
AUDIT_LOG_NAME = "audit.jsonl"
JOBS_DIR_NAME = "jobs"
# The writer's lock file in the output folder: one writer per store on one host.
WRITER_LOCK_NAME = "writer.lock"
# A test switch: 0 skips that lock, so that two writer processes on one store meet the writer lease.
WRITER_FLOCK = environment.flag("COMIX_TEST_WRITER_FLOCK", True).get()
# One writer per store across hosts: the writer lease in Redis with a fencing token (writer/lease.py),
# held for this many seconds and renewed every third of it. A writer killed without releasing it
# keeps a restarted one waiting at most this long; a network blip longer than it costs the writer lease.
WRITER_LEASE_TTL_S = environment.number("COMIX_WRITER_LEASE_TTL_S", 10.0, at_least=1).get()
# The latest writer lease token, recorded in the output folder: tokens grow even across a wiped Redis.
WRITER_TOKEN_NAME = "writer.token.json"
# Group commit (writer/grouping.py): the writer commits the results that continue the readable
# prefix in runs cut at multiples of SHARD_ROWS, at most WRITER_COMMIT_ROWS rows at once; a run
# that reaches no boundary is committed once its oldest result has waited WRITER_LINGER_S, and
# results past a gap (a batch not arrived yet) once they have waited WRITER_GAP_LINGER_S.
WRITER_COMMIT_ROWS = 2 * SHARD_ROWS
WRITER_LINGER_S = environment.number("COMIX_WRITER_LINGER_S", 1.0, at_least=0).get()
WRITER_GAP_LINGER_S = environment.number("COMIX_WRITER_GAP_LINGER_S", 10.0, at_least=0).get()
# fsync what the writer writes (chunks, zarr.json, manifests, committed_rows) before its rename and
# the folder after, so that no manifest outlives its rows on power loss (writer/commit.py says
# which renames need not be durable). Process crashes need no fsync (rename is atomic either way):
# off is for scratch stores, tests and benchmarks.
WRITER_FSYNC = environment.flag("COMIX_WRITER_FSYNC", True).get()

# --- search index beside the store (tools/search/) ---
# The index's folder beside a store named STORE_NAME (`<output_dir>/index/`).
INDEX_DIR_NAME = "index"
# Fewer vectors than this are indexed flat (exact, float32); from here on IVF lists of 8-bit
# scalar-quantized codes, about LISTS_PER_SQRT * sqrt(N) lists, NPROBE of them read per query.
INDEX_IVF_MIN_VECTORS = 50_000
INDEX_LISTS_PER_SQRT = 1.5
INDEX_NPROBE = 32
# A store grown past this multiple of the vectors its lists were trained on is indexed afresh.
INDEX_RETRAIN_GROWTH = 4.0

# --- broker and delivery: at least once (common/celery_app.py) ---
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
# Seconds before an unacknowledged task is handed to another worker. Far above a batch's runtime.
VISIBILITY_TIMEOUT = environment.integer("COMIX_VISIBILITY_TIMEOUT", 1800, at_least=1).get()
# A task is killed before its visibility timeout runs out, so it never runs twice concurrently.
TASK_TIME_LIMIT = environment.integer("COMIX_TASK_TIME_LIMIT", 1200, at_least=1).get()
# The soft limit lets a batch give its pages back before the hard one kills it.
SOFT_LIMIT_MARGIN_S = 60
TASK_SOFT_TIME_LIMIT = TASK_TIME_LIMIT - SOFT_LIMIT_MARGIN_S
# Batches go to one queue per model identity, `comix.embed.<model key>`: a worker consumes only
# its own model's queue, so another model never receives a job's batches (common/model/identity.py).
EMBED_QUEUE = "comix.embed"
# A worker's node name, set by `comix-embed worker` for its processes (logs, readiness, batch leases).
WORKER_NAME = environment.text("COMIX_WORKER_NAME")
# A worker's settings as one JSON object, set by `comix-embed worker` for its pool processes, which
# decode it (consumers/settings.py) with the field at fault named.
WORKER_SETTINGS = environment.text("COMIX_WORKER_SETTINGS")
# Kombu's Redis transport keeps one list per priority step and pops the lowest step first: work
# given back after a fault (PRIORITY_AGAIN) is taken before new batches (PRIORITY_NEW).
PRIORITY_AGAIN = 0
PRIORITY_NEW = 9
PRIORITY_STEPS = [PRIORITY_AGAIN, PRIORITY_NEW]
# A batch refused this many times by the writer, or lost this many times (its worker died, hit its
# time limit, or stopped renewing its batch lease), is given up: refused, `run` stops with exit 1;
# lost, its pages are committed as failed rows with the reason.
MAX_ATTEMPTS = environment.integer("COMIX_MAX_ATTEMPTS", 3, at_least=1).get()
# The batch lease (common/broker/batch_lease.py), not the writer lease: a worker process holding
# a batch renews it every BATCH_LEASE_TTL_S / 6 seconds; the writer sends a batch again once its
# batch lease has expired (a dead host, a preempted GPU) with no manifest.
BATCH_LEASE_TTL_S = environment.number("COMIX_LEASE_TTL_S", 30.0, positive=True).get()
# A worker given SIGTERM (a warm shutdown: `docker compose stop`, Kubernetes, systemd) takes no
# new batch and lets the batch at hand finish for at most this long; then, or at a second signal,
# it hands the batch back to the queue at once (a cold shutdown) and exits. The orchestrator's
# grace period must leave room above it: compose.yaml's stop_grace_period is 45 s.
WORKER_SHUTDOWN_S = environment.number("COMIX_WORKER_SHUTDOWN_S", 30.0, at_least=0).get()
# How often the writer looks for expired batch leases and given-up batches.
WRITER_SCAN_S = environment.number("COMIX_WRITER_SCAN_S", 2.0, positive=True).get()
# A test switch for fault tests (common/failpoint.py): "STAGE:PATH[,STAGE:PATH...]" stops, once
# per PATH, the worker process that reaches STAGE ("batch", "decode", "encode"), or the writer
# that reaches "commit" (a commit's rows written, its manifests not yet).
STOP_STAGES = ("batch", "decode", "encode", "commit")


def _stop_points(text: str) -> dict[str, str]:
    points = [item.partition(":") for item in text.split(",") if item]
    if not points or any(stage not in STOP_STAGES or not path for stage, _, path in points):
        raise ValueError(f"must be STAGE:PATH[,STAGE:PATH...] with STAGE one of {', '.join(STOP_STAGES)}")
    return {stage: path for stage, _, path in points}


STOP_AT: dict[str, str] = environment.declare("COMIX_TEST_STOP_AT", dict[str, str](), _stop_points).get()

# Results waiting for the writer are bounded: a worker waits while the stream holds
# `pending_bound(its batch's pages)` results: MAX_PENDING_ROWS pages' worth (room for the writer's
# group commits, about 85 MB at d=384), or exactly COMIX_MAX_PENDING_RESULTS results when it is set.
MAX_PENDING_ROWS = environment.integer("COMIX_MAX_PENDING_ROWS", 4096, at_least=1).get()
MAX_PENDING_RESULTS = environment.optional_integer("COMIX_MAX_PENDING_RESULTS", at_least=1).get()


def pending_bound(rows_per_result: int) -> int:
    """Results the stream holds at most, for results of `rows_per_result` pages."""
    if MAX_PENDING_RESULTS is not None:
        return MAX_PENDING_RESULTS
    return max(2, -(-MAX_PENDING_ROWS // max(1, rows_per_result)))


def masked_url(url: str) -> str:
    """`url` with its passwords shown as ***: how every URL is printed or logged (each part of a
    `sentinel://...;sentinel://...` URL alike)."""
    return ";".join(_masked(part) for part in url.split(";"))


def _masked(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


# Celery's form for Redis Sentinel (common/broker/connection.py): the sentinels, separated by ';'.
SENTINEL_SCHEME = "sentinel"


@dataclass(frozen=True)
class SentinelUrl:
    """A `sentinel://` broker URL taken apart: the sentinels, and the master's credentials and
    database (those of the first part, as kombu reads them)."""

    sentinels: list[tuple[str, int]]
    username: str | None
    password: str | None
    db: int


def is_sentinel(url: str) -> bool:
    return urlsplit(url).scheme == SENTINEL_SCHEME


def parse_sentinel_url(url: str) -> SentinelUrl:
    """`sentinel://[:password@]host:port[/db];sentinel://host:port;...`; ValueError says what is wrong."""
    parts = [urlsplit(part.strip()) for part in url.split(";") if part.strip()]
    sentinels = []
    for part in parts:
        if part.scheme != SENTINEL_SCHEME or not part.hostname:
            raise ValueError("must be sentinel://host:port parts separated by ';'")
        try:
            sentinels.append((part.hostname, part.port or 26379))
        except ValueError:
            raise ValueError(f"has a port that is no number in {masked_url(part.geturl())!r}") from None
    if not sentinels:
        raise ValueError("names no sentinel")
    first = parts[0]
    path = first.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"has a database that is no number: {path!r}")
    return SentinelUrl(
        sentinels=sentinels,
        username=unquote(first.username) if first.username else None,
        password=unquote(first.password) if first.password else None,
        db=int(path or 0),
    )


def _broker_url(url: str) -> str:
    # Celery's transport and our own clients (common/broker/connection.py) both take these schemes
    if is_sentinel(url):
        parse_sentinel_url(url)
    elif urlsplit(url).scheme not in ("redis", "rediss"):
        raise ValueError("is not a redis://, rediss:// or sentinel:// URL")
    return url


# Read when asked: `run` and `worker` hand a --broker URL to their children through it.
BROKER_URL = environment.text("COMIX_BROKER_URL", DEFAULT_BROKER_URL, _broker_url, lambda url: repr(masked_url(url)))
# The master's name that the sentinels of a sentinel:// broker URL know it by (their `sentinel
# monitor NAME ...`); Celery's `master_name` transport option. Unused with redis:// URLs.
BROKER_MASTER_NAME = environment.text("COMIX_BROKER_MASTER_NAME")
# How long a command waits for an unreachable broker (a failover, a Redis restart) before it gives
# up with an error, counted from the first failed try of each command.
BROKER_WAIT_S = environment.number("COMIX_BROKER_WAIT_S", 120.0, at_least=0)


def broker_url(cli_value: str | None = None) -> str:
    """The broker URL: the command-line value, else $COMIX_BROKER_URL, else local Redis."""
    return cli_value or BROKER_URL.get()


def broker_problem(url: str) -> str | None:
    """Why broker `url` cannot work, naming what to set; None when it can."""
    try:
        _broker_url(url)
    except ValueError as exc:
        return f"broker URL {masked_url(url)!r} {exc}"
    if is_sentinel(url) and not BROKER_MASTER_NAME.get():
        return (
            f"broker URL {masked_url(url)!r} names sentinels: set {BROKER_MASTER_NAME.name} to the name "
            "of the master they monitor (their `sentinel monitor NAME ...`)"
        )
    return None


def check_broker(url: str) -> None:
    """UsageError (exit status 2) for a broker URL that cannot work: checked before connecting."""
    problem = broker_problem(url)
    if problem:
        raise UsageError(problem)


def check() -> None:
    """Refuse settings that cannot work, naming the variable; every command calls this first."""
    problems = environment.problems()
    if SOFT_LIMIT_MARGIN_S >= TASK_TIME_LIMIT:
        problems.append(
            f"COMIX_TASK_TIME_LIMIT must be more than {SOFT_LIMIT_MARGIN_S} s (its soft limit comes "
            f"{SOFT_LIMIT_MARGIN_S} s earlier), got {TASK_TIME_LIMIT}"
        )
    if TASK_TIME_LIMIT >= VISIBILITY_TIMEOUT:
        problems.append(
            f"COMIX_TASK_TIME_LIMIT ({TASK_TIME_LIMIT} s) must be below COMIX_VISIBILITY_TIMEOUT "
            f"({VISIBILITY_TIMEOUT} s): otherwise a batch still running is delivered to a second worker"
        )
    if not BROKER_URL.problem() and (problem := broker_problem(BROKER_URL.get())):
        problems.append(f"{BROKER_URL.name}: {problem}")
    if problems:
        raise UsageError("configuration: " + "; ".join(problems))


# --- inputs on object storage and HTTP(S) (common/inputs/reading.py, docs/inputs.md) ---
# Objects read at once by one process: a worker's images ahead of decoding, the producer's DataSpecs.
# Object storage answers in tens of milliseconds, so throughput comes from reads in flight.
REMOTE_READS_IN_FLIGHT = environment.integer("COMIX_REMOTE_READS_IN_FLIGHT", 32, at_least=1).get()
# Tries of one read before its page fails, on a transient error only (503 SlowDown, 5xx, a reset
# connection, a timeout): backoff from REMOTE_BACKOFF_S, doubling, with jitter, at most 10 s apart.
REMOTE_READ_ATTEMPTS = environment.integer("COMIX_REMOTE_READ_ATTEMPTS", 8, at_least=1).get()
REMOTE_BACKOFF_S = environment.number("COMIX_REMOTE_BACKOFF_S", 0.1, at_least=0).get()
# Seconds to connect, and to wait for bytes, before a try counts as a transient failure.
REMOTE_TIMEOUT_S = environment.number("COMIX_REMOTE_TIMEOUT_S", 30.0, positive=True).get()
# Read public buckets without signing (`--anonymous` sets it for a command and its children).
S3_ANONYMOUS = environment.flag("COMIX_S3_ANONYMOUS", False)
# The endpoint of an S3-compatible server is the AWS SDKs' own variable; `--endpoint-url` sets it.
S3_ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


# --- snapshots (tools/snapshot/) ---
# Where the read commands keep their local mirror of a snapshot given as `--zarr s3://...`.
SNAPSHOT_CACHE = environment.text(
    "COMIX_SNAPSHOT_CACHE", os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "comix-embed", "snapshots")
)
# A test switch for the killed-snapshot test: `comix-embed snapshot` kills itself (SIGKILL) once it
# has sent this many files, so that a test lands a kill at a point of its choosing.
SNAPSHOT_KILL_AFTER = environment.optional_integer("COMIX_TEST_SNAPSHOT_KILL_AFTER", at_least=1)

# --- comix-embed import-v2 (writer/import_v2/) ---
# A test switch for the interrupted-import test: `import-v2` kills itself (SIGKILL) after this many
# commits, between a commit and the import record that counts it.
IMPORT_KILL_AFTER = environment.optional_integer("COMIX_TEST_IMPORT_KILL_AFTER", at_least=1)
# Where the read commands keep the converted copy of a generate_embeddings_zarr_v2 store they are
# given (`--zarr` naming one): converted once, again only when the v2 store changes.
V2_CACHE = environment.text(
    "COMIX_V2_CACHE", os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "comix-embed", "v2-stores")
)


# --- comix-embed serve ---
# Basic-auth credentials, from the environment as Flower's are; read when asked.
SERVE_USER, SERVE_PASSWORD = environment.text("COMIX_SERVE_USER"), environment.text("COMIX_SERVE_PASSWORD")


def serve_credentials() -> tuple[str, str] | None:
    """Basic-auth user and password for `serve`, or None unless both are set.

    `serve` refuses to listen beyond the loopback interface without them.
    """
    user, password = SERVE_USER.get(), SERVE_PASSWORD.get()
    return (user, password) if user and password else None
