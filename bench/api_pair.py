"""Two web servers side by side under the same load: CPU per single-event request of each.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/loyalty_bench_api \\
        .venv/bin/python bench/api_pair.py uwsgi:3x1 granian:2x1 --duration 15

On a machine others share, events/s and even CPU per request move with the load from one
minute to the next, so comparing two runs taken one after the other says little. Here both
servers run at once, each with its own wrk (16 connections of unique purchases, as
bench/api.py), so both see the same contention; each line prints its events/s, p50/p99 and the
CPU per request of its server's processes and of its own PostgreSQL backends (told apart by
`application_name`). A side may run another checkout of the code, `SERVER:WxT@PATH` (e.g. a
`git worktree` of main): a before/after comparison of a change under the same load. Swap the
sides and repeat: the side given more threads also gets more of the CPU, hence more events/s;
the CPU per request is the fair figure.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import api
from benchkit import bench_program, jwt_token, keys


def side(spec: str) -> dict:
    server_part, _, root = spec.partition("@")
    server, _, shape = server_part.partition(":")
    workers, _, threads = (shape or "4x1").partition("x")
    return {
        "spec": spec,
        "server": server,
        "workers": int(workers),
        "threads": int(threads or 1),
        "root": Path(root).resolve() if root else api.ROOT,
    }


def start(s: dict, index: int, port: int, pem: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "DEBUG": "False",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "LOYALTY_JWT_PUBLIC_KEY": pem,
        "LOYALTY_JWT_JWKS_URL": "",
        "CONN_MAX_AGE": "600",
        "LOG_LEVEL": "WARNING",
        "PGAPPNAME": f"api_pair_{index}",  # libpq: tells this side's backends apart
    }
    cmd = api.server_command(s["server"], port, s["workers"], s["threads"])
    cmd[0] = str(s["root"] / ".venv" / "bin" / Path(cmd[0]).name)
    return subprocess.Popen(cmd, cwd=s["root"], env=env, start_new_session=True)


def backends_cpu(index: int) -> dict[int, float]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", [f"api_pair_{index}"]
        )
        pids = [row[0] for row in cursor.fetchall()]
    return {pid: found[1] for pid in pids if (found := api._proc_cpu(pid)) is not None}


def wrk(port: int, seconds: int, token: str, program_ids: list[str], members: int):
    cmd = [
        "wrk", "-t", "1", "-c", "16", "-d", f"{seconds}s", "--timeout", "60s",
        "-s", str(api.ROOT / "bench" / "wrk_events.lua"), f"http://127.0.0.1:{port}",
        "--", "/api/v1/events", token, ",".join(program_ids), str(members), "0",
        uuid.uuid4().hex[:12],
    ]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sides", nargs=2, metavar="SERVER:WxT[@PATH]")
    parser.add_argument("--duration", type=int, default=15)
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--port", type=int, default=8944, help="the first side's; +1 the other")
    opts = parser.parse_args()
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        sys.exit("Set DATABASE_URL to a PostgreSQL database (it is migrated and written to).")
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=api.ROOT, check=True)
    api.django_setup()
    sides = [side(spec) for spec in opts.sides]
    pem, private = keys()
    program_ids = [bench_program(api.MERCHANT, "pair") for _ in range(4)]
    token = jwt_token(private, api.MERCHANT)
    ports = [opts.port, opts.port + 1]
    servers = []
    try:
        for index, (s, port) in enumerate(zip(sides, ports, strict=True)):
            servers.append(start(s, index, port, pem))
        for port in ports:
            api.wait_ready(port)
        for load in [wrk(port, 2, token, program_ids, opts.members) for port in ports]:
            load.communicate()  # warm-up: connections, code paths
        cpu0 = [api.group_cpu(server.pid) for server in servers]
        db0 = [backends_cpu(index) for index in range(2)]
        loads = [wrk(port, opts.duration, token, program_ids, opts.members) for port in ports]
        outs = [load.communicate()[0] for load in loads]
        cpu1 = [api.group_cpu(server.pid) for server in servers]
        db1 = [backends_cpu(index) for index in range(2)]
    finally:
        for server in servers:
            api.server_stop(server)
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} after the run")
    for index, s in enumerate(sides):
        r = json.loads(re.search(r"^WRK (\{.*\})$", outs[index], re.MULTILINE).group(1))
        n = max(r["requests"], 1)
        server_ms = 1000 * (cpu1[index] - cpu0[index]) / n
        db = sum(cpu - db0[index].get(pid, 0.0) for pid, cpu in db1[index].items())
        db_ms = 1000 * db / n
        print(
            f"{s['spec']:<28} {r['events'] / opts.duration:6.0f} events/s  "
            f"p50 {r['p50_us'] / 1000:6.1f} ms  p99 {r['p99_us'] / 1000:6.1f} ms  "
            f"{r['requests']} requests  CPU per request: server {server_ms:.2f} + "
            f"PostgreSQL {db_ms:.2f} = "
            f"{server_ms + db_ms:.2f} ms  (non-201: {r['other_requests']})"
        )


if __name__ == "__main__":
    main()
