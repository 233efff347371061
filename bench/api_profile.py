"""CPU cost of one `POST /api/v1/events` in one process, through Django's WSGI handler.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/loyalty_bench_http \\
        .venv/bin/python bench/api_profile.py --requests 2000 --auth jwt,api_key

What the web server would run for each request (the WSGI application, DEBUG=False, persistent
connection), minus the socket: one purchase of an existing member per request, with a fresh
`Idempotency-Key`, authenticated by a JWT bearer token (RS256) or a merchant API key. Printed
per request: Python CPU (time.process_time), the PostgreSQL backend's CPU (/proc schedstat of
our own backend), their sum, SQL statements, and the service alone (`event_ingest` called
directly, same events) so the API layer's own cost is the difference. `--profile FILE` writes a
pyinstrument HTML profile of the requests (or prints text with `--profile -`).

Numbers vary little with what else the machine runs (CPU time, not wall time); events/s through
the web server is bench/api.py's job.
"""

import argparse
import io
import json
import os
import random
import shlex
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

from benchkit import MODULES, jwt_token, keys, purchase

ROOT = Path(__file__).resolve().parent.parent


def setup(pem: str) -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "loyalty_project.settings.base")
    os.environ["DEBUG"] = "False"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ["LOYALTY_JWT_PUBLIC_KEY"] = pem
    os.environ["LOYALTY_JWT_JWKS_URL"] = ""
    os.environ["CONN_MAX_AGE"] = "600"
    import django

    django.setup()


def api_key(merchant_id: str) -> str:
    from access.models import MerchantAPIKey
    from loyalty.models import Merchant

    merchant, _ = Merchant.objects.get_or_create(id=merchant_id)
    _, key = MerchantAPIKey.objects.create_key(
        name="bench", merchant=merchant, permissions=["events:write", "members:read"]
    )
    return key


def program_create(members: int) -> tuple[str, str]:
    """(program id, merchant id): a program with a budget, a daily cap and `members` balances."""
    sys.path.insert(0, str(ROOT / "bench"))
    import ingest

    (program_id,) = ingest.programs_create(1, members, f"http_{uuid.uuid4().hex[:6]}")
    from loyalty.models import Program

    return program_id, Program.objects.get(pk=program_id).merchant_id


def environ_for(body: bytes, auth: str) -> dict:
    return {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/api/v1/events",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "50000",
        "HTTP_HOST": "127.0.0.1",
        "HTTP_USER_AGENT": "bench/1.0",
        "HTTP_AUTHORIZATION": auth,
        "HTTP_IDEMPOTENCY_KEY": f"bench-{uuid.uuid4()}",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }


def backend_cpu_ns() -> int | None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class Counter:
    def __init__(self):
        self.n = 0

    def __call__(self, execute, sql, params, many, context):
        self.n += 1
        return execute(sql, params, many, context)


def commits() -> int:
    """Transactions committed in this database so far (our connection is its only one). The
    statistics are sent when a backend goes idle, at most once a second: wait for them."""
    from django.db import connection

    time.sleep(1.2)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        )
        return cursor.fetchone()[0]


def run_http(app, program_id, members, auth, n, rng, *, count=False) -> dict:
    from django.db import connection

    bodies = [json.dumps(purchase(program_id, rng, members)).encode() for _ in range(n)]
    statuses: dict[int, int] = {}
    counter = Counter()

    def start_response(status, headers, exc_info=None):
        code = int(status.split()[0])
        statuses[code] = statuses.get(code, 0) + 1

    commits0 = commits() if count else 0
    db0 = backend_cpu_ns()
    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    if count:
        with connection.execute_wrapper(counter):
            for body in bodies:
                b"".join(app(environ_for(body, auth), start_response))
    else:
        for body in bodies:
            b"".join(app(environ_for(body, auth), start_response))
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    db1 = backend_cpu_ns()
    return {
        "py_ms": 1000 * cpu / n,
        "db_ms": None if db0 is None else (db1 - db0) / 1e6 / n,
        "wall_ms": 1000 * wall / n,
        "statements": counter.n / n if count else None,
        # Less the three statements that read the counter and the backend's pid.
        "commits": (commits() - commits0 - 3) / n if count else None,
        "statuses": statuses,
    }


def run_service(program_id, members, n, rng, *, count=False) -> dict:
    from django.db import connection

    from loyalty.actors import Actor
    from loyalty.models import Program
    from loyalty.services import EventInput, event_ingest

    program = Program.objects.get(pk=program_id)
    actor = Actor(id="bench", role="system", ip="127.0.0.1", user_agent="bench/1.0")
    events = [
        EventInput(
            type="purchase",
            member_id=f"u{rng.randrange(members)}",
            idempotency_key=f"bench-{uuid.uuid4()}",
            amount=Decimal(rng.randrange(500, 20000, 25)),
            currency="XOF",
            module=rng.choice(MODULES),
            reference=f"order-{uuid.uuid4().hex[:16]}",
        )
        for _ in range(n)
    ]
    counter = Counter()
    db0 = backend_cpu_ns()
    cpu0 = time.process_time()
    if count:
        with connection.execute_wrapper(counter):
            for event in events:
                event_ingest(program=program, event=event, actor=actor)
    else:
        for event in events:
            event_ingest(program=program, event=event, actor=actor)
    cpu = time.process_time() - cpu0
    db1 = backend_cpu_ns()
    return {
        "py_ms": 1000 * cpu / n,
        "db_ms": None if db0 is None else (db1 - db0) / 1e6 / n,
        "statements": counter.n / n if count else None,
    }


def fmt(name: str, r: dict) -> str:
    db = r["db_ms"]
    total = f"{r['py_ms'] + db:6.2f}" if db is not None else "   n/a"
    line = f"{name:<22} python {r['py_ms']:6.2f}  postgres {db or 0:6.2f}  total {total} ms CPU"
    if r.get("wall_ms") is not None:
        line += f"  wall {r['wall_ms']:.2f} ms"
    if r.get("statements") is not None:
        line += f"  {r['statements']:.1f} statements"
    if r.get("commits") is not None:
        line += f"  {r['commits']:.2f} commits"
    if r.get("statuses"):
        line += f"  statuses {r['statuses']}"
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--members", type=int, default=2000)
    parser.add_argument("--auth", default="jwt,api_key")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the best is kept")
    parser.add_argument("--no-service", action="store_true")
    parser.add_argument("--profile", metavar="FILE", help="pyinstrument profile ('-': text)")
    parser.add_argument(
        "--setup-only",
        action="store_true",
        help="print shell exports (program, credentials, public key) for a web server + wrk",
    )
    parser.add_argument(
        "--cprofile", type=int, metavar="N", help="print the top N functions by CPU (cProfile)"
    )
    opts = parser.parse_args()
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        sys.exit("Set DATABASE_URL to a PostgreSQL database (it is migrated and written to).")

    pem, private = keys()
    setup(pem)
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    # The application as the web process loads it (wsgi.py: Django's handler, frozen out of
    # the cyclic garbage collector once loaded).
    from loyalty_project.wsgi import application as app

    program_id, merchant_id = program_create(opts.members)
    auths = {
        "jwt": f"Bearer {jwt_token(private, merchant_id)}",
        "api_key": f"Api-Key {api_key(merchant_id)}",
    }
    if opts.setup_only:
        print(f"export WRK_PROGRAM={program_id}")
        print(f"export WRK_JWT={shlex.quote(auths['jwt'])}")
        print(f"export WRK_API_KEY={shlex.quote(auths['api_key'])}")
        print(f"export LOYALTY_JWT_PUBLIC_KEY={shlex.quote(pem)}")
        return
    rng = random.Random(1)
    for kind in opts.auth.split(","):
        auth = auths[kind]
        run_http(app, program_id, opts.members, auth, opts.warmup, rng)
        if opts.cprofile:
            import cProfile
            import pstats

            profiler = cProfile.Profile(time.process_time)
            profiler.enable()
            run_http(app, program_id, opts.members, auth, opts.requests, rng)
            profiler.disable()
            stats = pstats.Stats(profiler).sort_stats(os.environ.get("PROFILE_SORT", "cumulative"))
            stats.print_stats(opts.cprofile)
            if os.environ.get("PROFILE_DUMP"):
                stats.dump_stats(os.environ["PROFILE_DUMP"])
            continue
        if opts.profile:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.0002)
            profiler.start()
            run_http(app, program_id, opts.members, auth, opts.requests, rng)
            profiler.stop()
            if opts.profile == "-":
                print(profiler.output_text(unicode=True, color=False, show_all=False))
            else:
                path = opts.profile.replace(".html", f"_{kind}.html")
                Path(path).write_text(profiler.output_html())
                print(f"profile: {path}")
            continue
        runs = [
            run_http(app, program_id, opts.members, auth, opts.requests, rng)
            for _ in range(opts.repeat)
        ]
        best = min(runs, key=lambda r: r["py_ms"] + (r["db_ms"] or 0))
        counted = run_http(app, program_id, opts.members, auth, 200, rng, count=True)
        best["statements"], best["commits"] = counted["statements"], counted["commits"]
        print(fmt(f"HTTP {kind}", best))
    if not opts.no_service and not opts.profile and not opts.cprofile:
        run_service(program_id, opts.members, opts.warmup, rng)
        runs = [
            run_service(program_id, opts.members, opts.requests, rng) for _ in range(opts.repeat)
        ]
        best = min(runs, key=lambda r: r["py_ms"] + (r["db_ms"] or 0))
        best["statements"] = run_service(program_id, opts.members, 200, rng, count=True)[
            "statements"
        ]
        print(fmt("service event_ingest", best))


if __name__ == "__main__":
    main()
