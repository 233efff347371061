"""CPU cost per event of the batch path, in one process: Python and its PostgreSQL backend.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/loyalty_bench \\
        .venv/bin/python bench/batch_profile.py --batches 20

Throughput on a shared machine is noise; CPU per event is not. This drives batches of
`--size` purchases (members drawn from `--members` per program, `--per-batch` programs mixed
in each batch, every item with its own idempotency_key) two ways:

- direct: `events_ingest_batch` called with parsed items (the service alone);
- http:   `POST /api/v1/events/batch` through the WSGI application, as the web server calls it
          (DEBUG off, JWT bearer token, request `Idempotency-Key`, the JSON body built
          before the clock starts: the load client's cost is not counted).

It prints, per mode, Python CPU ms/event (time.process_time), PostgreSQL backend CPU ms/event
(/proc/<pid>/schedstat of this connection's backend) and the statements of one batch.
`--only http|direct` with `--batches` N runs one mode, for a profiler:

    .venv/bin/python -m pyinstrument bench/batch_profile.py --only http --batches 10
"""

import argparse
import gc
import io
import json
import os
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

from benchkit import bench_program, jwt_token, keys, members_create, purchase

ROOT = Path(__file__).resolve().parent.parent
MERCHANT = "m_bench_batch"


def setup(pem: str) -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "loyalty_project.settings.base")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ["DEBUG"] = "False"
    os.environ["LOYALTY_JWT_PUBLIC_KEY"] = pem
    os.environ["LOYALTY_JWT_JWKS_URL"] = ""
    os.environ.setdefault("CONN_MAX_AGE", "600")
    import django

    django.setup()


def batch_items(program_ids, rng, size, members) -> list[dict]:
    return [
        {
            **purchase(rng.choice(program_ids), rng, members),
            "idempotency_key": f"bench-{uuid.uuid4()}",
        }
        for _ in range(size)
    ]


def backend_cpu_ns() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


class Http:
    """POST through the WSGI handler the web server calls (no test client, no socket)."""

    def __init__(self, bearer: str) -> None:
        from django.core.handlers.wsgi import WSGIHandler

        self.handler = WSGIHandler()
        self.bearer = bearer

    def post(self, path: str, body: bytes, key: str) -> tuple[int, bytes]:
        environ = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": path,
            "SCRIPT_NAME": "",
            "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8000",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "HTTP_HOST": "127.0.0.1",
            "CONTENT_TYPE": "application/json",
            "CONTENT_LENGTH": str(len(body)),
            "HTTP_AUTHORIZATION": f"Bearer {self.bearer}",
            "HTTP_IDEMPOTENCY_KEY": key,
            "wsgi.input": io.BytesIO(body),
            "wsgi.url_scheme": "http",
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": False,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
            "wsgi.version": (1, 0),
        }
        status = []
        chunks = self.handler(environ, lambda s, h, exc_info=None: status.append(s))
        data = b"".join(chunks)
        if hasattr(chunks, "close"):
            chunks.close()
        return int(status[0].split()[0]), data


def run_http(http: Http, bodies: list[bytes]) -> int:
    awarded = 0
    for body in bodies:
        status, data = http.post("/api/v1/events/batch", body, f"bench-{uuid.uuid4()}")
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {data[:500]!r}")
        awarded += data.count(b'"status":201')
    return awarded


def run_direct(batches: list[list[dict]]) -> int:
    from loyalty.actors import Actor
    from loyalty.api.events import event_parse
    from loyalty.errors import DomainError
    from loyalty.models import Program
    from loyalty.services.batch import events_ingest_batch

    actor = Actor(id="bench", role="system")
    programs = {p.pk: p for p in Program.objects.filter(merchant_id=MERCHANT)}
    awarded = 0
    for raw in batches:
        items = []
        for item in raw:
            program_id, event = event_parse(item)
            items.append((programs[program_id], event))
        outcomes = events_ingest_batch(items=items, actor=actor)
        awarded += sum(1 for o in outcomes if not isinstance(o, DomainError))
    return awarded


def measure(name: str, run, work, events: int, profile: str | None = None) -> tuple:
    cpu, db = time.process_time(), backend_cpu_ns()
    start = time.perf_counter()
    if profile:
        import cProfile

        profiler = cProfile.Profile(time.process_time)  # CPU, not waits for the server
        awarded = profiler.runcall(run, work)
        profiler.dump_stats(f"{profile}.{name}")
    else:
        awarded = run(work)
    wall = time.perf_counter() - start
    cpu, db = time.process_time() - cpu, backend_cpu_ns() - db
    python, postgres = 1000 * cpu / events, db / 1e6 / events
    print(
        f"{name:<7} {events} events ({awarded} awarded): Python {python:.3f} "
        f"ms CPU/event, PostgreSQL {postgres:.3f} ms CPU/event, total "
        f"{python + postgres:.3f}; wall {1000 * wall / events:.3f} ms/event"
    )
    return python, postgres


def statements(name: str, run, work) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        run(work)
    print(f"{name:<7} statements per batch: {len(captured.captured_queries)}")
    if os.environ.get("BATCH_SQL"):
        for query in captured.captured_queries:
            print(f"   {query['sql'][:160]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--programs", type=int, default=4)
    parser.add_argument("--per-batch", type=int, default=4, help="programs mixed in a batch")
    parser.add_argument("--members", type=int, default=100_000, help="per program")
    parser.add_argument("--only", choices=["http", "direct"])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per mode; best kept")
    parser.add_argument(
        "--new-members", action="store_true", help="no balance up front: most items create one"
    )
    parser.add_argument("--cprofile", metavar="PREFIX", help="cProfile the timed run: PREFIX.mode")
    parser.add_argument(
        "--gc-freeze",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="gc.freeze() after the warm-up, as loyalty_project/wsgi.py does once the app is "
        "loaded: the collector then no longer walks Django's ~100,000 startup objects",
    )
    opts = parser.parse_args()
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        sys.exit("Set DATABASE_URL to a PostgreSQL database (it is migrated and written to).")
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, check=True)
    pem, private = keys()
    setup(pem)

    rng = random.Random(opts.seed)
    program_ids = [bench_program(MERCHANT, "batch") for _ in range(opts.programs)]
    if not opts.new_members:
        members_create(program_ids, opts.members)

    def make(n: int) -> list[list[dict]]:
        out = []
        for _ in range(n):
            chosen = rng.sample(program_ids, min(opts.per_batch, len(program_ids)))
            out.append(batch_items(chosen, rng, opts.size, opts.members))
        return out

    http = Http(jwt_token(private, MERCHANT))

    def bodies(batches):
        return [json.dumps({"events": b}).encode() for b in batches]

    events = opts.batches * opts.size
    modes = [opts.only] if opts.only else ["direct", "http"]
    for mode in modes:
        run, prep = (
            (run_direct, lambda b: b) if mode == "direct" else (lambda w: run_http(http, w), bodies)
        )
        run(prep(make(2)))  # warm up: connection, prepared statements, code paths
        if opts.gc_freeze:
            gc.collect()
            gc.freeze()
        statements(mode, run, prep(make(1)))
        runs = [
            measure(mode, run, prep(make(opts.batches)), events, opts.cprofile)
            for _ in range(opts.repeat)
        ]
        if opts.repeat > 1:  # the least disturbed run of a shared machine
            python, postgres = min(p for p, _ in runs), min(d for _, d in runs)
            print(
                f"{mode:<7} best of {opts.repeat}: Python {python:.3f}, PostgreSQL {postgres:.3f}"
            )


if __name__ == "__main__":
    main()
