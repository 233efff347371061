"""The host's floor for a Django write endpoint: bench/api.py's `--floor` phase serves this.

A minimal Django application (no installed apps, no middleware, no REST framework) with one
view, POST /floor: it reads `member_id` and `amount` from a JSON body and, in one transaction,
locks the member's account row, inserts an entry and updates the account (a locked read, an
insert, an update: the "minimal Django write endpoint" of the reference figures). Served by
the same web server and settings as the product (uWSGI, deploy/uwsgi.ini, persistent
connections, prepared statements) and driven by the same load, it measures what any Django
write costs on this host, so the product's figures can be read against it.

Its two tables live in the benchmark's database (`floor_tables_create`); nothing of the
product is touched.
"""

import json
import os

import environ
from django.conf import settings
from django.core.wsgi import get_wsgi_application
from django.db import connection, transaction
from django.http import HttpResponse, JsonResponse
from django.urls import path


def floor_tables_create(cursor, members: int) -> None:
    """Accounts u0 .. u<members-1> (the member ids bench/wrk_events.lua draws), no entries."""
    cursor.execute("DROP TABLE IF EXISTS bench_floor_entry, bench_floor_account")
    cursor.execute(
        "CREATE TABLE bench_floor_account (member_id text PRIMARY KEY, balance numeric NOT NULL, "
        "updated_at timestamptz NOT NULL)"
    )
    cursor.execute(
        "CREATE TABLE bench_floor_entry (id bigserial PRIMARY KEY, member_id text NOT NULL "
        "REFERENCES bench_floor_account, amount numeric NOT NULL, created_at timestamptz NOT NULL)"
    )
    cursor.execute(
        "INSERT INTO bench_floor_account SELECT 'u' || g, 0, now() FROM generate_series(0, %s) g",
        [members - 1],
    )
    cursor.execute("ANALYZE bench_floor_account")


def floor_write(request):
    if request.method != "POST":
        return HttpResponse(status=405)
    body = json.loads(request.body)
    member_id, amount = body["member_id"], body["amount"]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT balance FROM bench_floor_account WHERE member_id = %s FOR UPDATE", [member_id]
        )
        (balance,) = cursor.fetchone()
        cursor.execute(
            "INSERT INTO bench_floor_entry (member_id, amount, created_at) "
            "VALUES (%s, %s, now()) RETURNING id",
            [member_id, amount],
        )
        (entry_id,) = cursor.fetchone()
        cursor.execute(
            "UPDATE bench_floor_account SET balance = balance + %s, updated_at = now() "
            "WHERE member_id = %s",
            [amount, member_id],
        )
    response = JsonResponse({"entry_id": entry_id, "balance": str(balance)}, status=201)
    response["Content-Length"] = len(response.content)  # as the product's answers carry
    return response


def healthz(request):
    return HttpResponse("ok")


urlpatterns = [path("floor", floor_write), path("healthz", healthz)]

if not settings.configured:  # as the web server's application (bench/api.py only imports it)
    database = environ.Env.db_url_config(os.environ["DATABASE_URL"])
    database["CONN_MAX_AGE"] = 600
    database["OPTIONS"] = {"server_side_binding": True, "prepare_threshold": 5}
    settings.configure(
        DEBUG=False,
        SECRET_KEY=os.urandom(32).hex(),
        ALLOWED_HOSTS=["127.0.0.1", "localhost"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=[],
        MIDDLEWARE=[],
        DATABASES={"default": database},
        USE_TZ=True,
    )
    application = get_wsgi_application()
