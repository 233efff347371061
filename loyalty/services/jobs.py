"""Job records: one row per run of a background job (tier evaluation, point expiry, campaigns,
hold and approval expiry), with its progress, counts and how it ended.

A job runs in chunks, each chunk its own short transaction that also records the job's
progress, so a crash loses at most the chunk in flight and a re-run finishes the rest. Two
active runs of the same kind for the same program and local day cannot exist: `run_key` is
unique while a job is queued or running (a partial unique index). A run whose heartbeat stopped
long ago (a killed worker), or a queued job no worker ever started (its task message was lost),
is marked failed ("abandoned"): by the next run of its kind and program, whatever its day, and
by a sweep that beat runs every few minutes (`jobs_reap_stale`), so no job says "running"
forever.
"""

import logging
import zoneinfo
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, models, transaction
from django.db.models import Q
from django.db.models.expressions import DatabaseDefault
from django.utils import timezone
from psycopg.types.json import Jsonb

from audit.models import AuditEntry
from audit.services import audit_entries_build, audit_record

from ..actors import Actor, system_actor
from ..errors import Conflict, NotFound, QueueUnavailable
from ..models import Job, Program
from .balances import program_local_date, serial_sequence

logger = logging.getLogger(__name__)

ACTIVE = (Job.Status.QUEUED, Job.Status.RUNNING)
# Kinds an operator may trigger by hand (API and admin); the others are housekeeping.
MANUAL_KINDS = (Job.Kind.TIER_EVALUATION, Job.Kind.POINT_EXPIRY, Job.Kind.CAMPAIGN_EXECUTION)


def _stale_after() -> timedelta:
    return timedelta(seconds=settings.LOYALTY_JOB_STALE_SECONDS)


class JobAlreadyRunning(Conflict):
    code = "job_already_running"
    title = "The same job is already queued or running for this program today"


def job_run_key(*, kind: str, program: Program | None) -> str:
    """`<kind>:<program or all>:<local date>`; the day is the program's (or the beat's)."""
    if program is not None:
        day = program_local_date(program)
    else:
        tz = zoneinfo.ZoneInfo(settings.CELERY_TIMEZONE)
        day = timezone.localtime(timezone.now(), tz).date()
    return f"{kind}:{program.pk if program is not None else 'all'}:{day.isoformat()}"


@transaction.atomic(durable=True)
def job_create(
    *,
    kind: str,
    actor: Actor,
    program: Program | None = None,
    parameters: dict | None = None,
) -> Job:
    """Queues a job; refuses a second active run of the same kind, program and day."""
    if kind not in Job.Kind.values:
        raise NotFound(f"Unknown job kind {kind!r}.")
    run_key = job_run_key(kind=kind, program=program)
    # Any day's: a run that died yesterday has another key, and would else stay "running".
    same = Job.objects.filter(kind=kind)
    if program is not None:
        _reap_stale(same.filter(program=program))
    else:
        _reap_stale(same.filter(program__isnull=True))
    try:
        with transaction.atomic():
            job = Job.objects.create(
                kind=kind,
                program=program,
                merchant_id=program.merchant_id if program is not None else None,
                parameters=parameters or {},
                run_key=run_key,
                triggered_by=actor.id,
            )
    except IntegrityError as exc:
        active = Job.objects.filter(run_key=run_key, status__in=ACTIVE).first()
        raise JobAlreadyRunning(job_id=str(active.pk) if active else None, run_key=run_key) from exc
    audit_record(
        actor=actor,
        action="job.create",
        entity_type="job",
        entity_id=job.pk,
        merchant_id=job.merchant_id,
        after={"kind": kind, "program_id": str(program.pk) if program else None},
    )
    return job


@transaction.atomic(durable=True)
def jobs_reap_stale() -> int:
    """The sweep beat runs (`loyalty.jobs_reap_stale`): marks failed every queued or running
    job whose heartbeat (or, never started, whose creation) is older than
    `LOYALTY_JOB_STALE_SECONDS`; returns how many. A job a live worker is writing (its row
    locked) is skipped: it is not stale."""
    # `run_key <> ''` (every job has one) lets PostgreSQL read the partial index of the
    # active jobs rather than the whole table.
    active = Job.objects.exclude(run_key="")
    return _reap_stale(active, skip_locked=True)


def _reap_stale(jobs: models.QuerySet, *, skip_locked: bool = False) -> int:
    """Fails the active ones of `jobs` whose heartbeat stopped (their worker died) or that
    no worker started (their task was lost), in the caller's transaction. The row lock and
    the re-read under it keep this exact against `job_run`: a claim or a takeover that wrote
    a fresh heartbeat first is seen here and left alone, and one that comes after finds the
    job failed and does nothing."""
    now = timezone.now()
    cutoff = now - _stale_after()
    reaped = 0
    locked = jobs.select_for_update(skip_locked=skip_locked).filter(status__in=ACTIVE)
    for job in locked.order_by("created_at", "pk"):
        beat = _last_beat(job)
        if beat >= cutoff:
            continue
        if job.status == Job.Status.QUEUED:
            job.error = (
                f"abandoned: queued at {beat.isoformat()} and never started by a worker "
                f"within {settings.LOYALTY_JOB_STALE_SECONDS} s (its task was lost)"
            )
        else:
            job.error = (
                f"abandoned: no progress since {beat.isoformat()}, over "
                f"{settings.LOYALTY_JOB_STALE_SECONDS} s (its worker died)"
            )
        before = job.status
        job.status = Job.Status.FAILED
        job.finished_at = now
        job.save(update_fields=["status", "error", "finished_at"])
        audit_record(
            actor=system_actor("job_reaper"),
            action="job.abandon",
            entity_type="job",
            entity_id=job.pk,
            merchant_id=job.merchant_id,
            before={"status": before},
            after={"status": job.status, "error": job.error},
        )
        logger.warning("job %s (%s, %s) %s", job.pk, job.kind, job.run_key, job.error)
        reaped += 1
    return reaped


def _last_beat(job: Job):
    beat = (job.progress or {}).get("heartbeat")
    if beat:
        return datetime.fromisoformat(beat)
    return job.started_at or job.created_at


def job_enqueue(
    *, kind: str, actor: Actor, program: Program | None = None, parameters: dict | None = None
) -> Job:
    """Creates the job and hands it to a Celery worker once the row is committed."""
    job = job_create(kind=kind, actor=actor, program=program, parameters=parameters)
    from ..tasks import job_run_task  # the tasks module imports services: import late

    job_id = str(job.pk)

    def send() -> None:
        try:
            job_run_task.delay(job_id)
        except Exception as exc:
            # Broker unreachable: end the record now rather than block the day's run key.
            Job.objects.filter(pk=job_id, status=Job.Status.QUEUED).update(
                status=Job.Status.FAILED, error=f"not queued: {exc}"[:4000],
                finished_at=timezone.now(),
            )  # fmt: skip
            logger.exception("job %s not queued", job_id)
            raise QueueUnavailable(job_id=job_id) from exc

    # job_create has committed; on_commit still defers the send when a caller wraps us.
    transaction.on_commit(send)
    return job


def job_run_scheduled(*, kind: str) -> Job | None:
    """What beat runs: a job over every program, in this worker; None when one is active."""
    try:
        job = job_create(kind=kind, actor=system_actor(kind))
    except JobAlreadyRunning as exc:
        logger.info("job %s skipped: %s", kind, exc.context)
        return None
    return job_run(job_id=job.pk)


def job_run(*, job_id) -> Job:
    """Runs a queued job to its end. A duplicate delivery of a job that another worker runs,
    or that already ended, does nothing."""
    now = timezone.now()
    claimed = Job.objects.filter(pk=job_id, status=Job.Status.QUEUED).update(
        status=Job.Status.RUNNING, started_at=now, progress={"heartbeat": now.isoformat()}
    )
    job = Job.objects.filter(pk=job_id).select_related("program").first()
    if job is None:
        raise NotFound("No such job.", job_id=str(job_id))
    if not claimed and job.status == Job.Status.RUNNING and _last_beat(job) < now - _stale_after():
        # Redelivered after its worker died (acks_late): take it over, once. The takeover
        # runs the job again from its start, under a new attempt number (see `job_attempt`).
        claimed = Job.objects.filter(pk=job_id, status=Job.Status.RUNNING, progress=job.progress)
        claimed = claimed.update(progress={**job.progress, "heartbeat": now.isoformat(),
                                           "resumed_at": now.isoformat(),
                                           "attempt": job_attempt(job) + 1})  # fmt: skip
        job.refresh_from_db()
    if not claimed:
        logger.info("job %s not run: it is %s", job_id, job.status)
        return job
    runner = _runners().get(job.kind)
    tracker = JobTracker(job)
    if runner is None:  # a kind this version cannot run (churn_update comes with SIRA's batch)
        _job_end(job, tracker, status=Job.Status.FAILED, error=f"no runner for {job.kind}")
        return job
    try:
        runner(job=job, tracker=tracker)
    except JobSuperseded:
        logger.warning("job %s (%s) stopped: failed as abandoned or taken over meanwhile",
                       job.pk, job.kind)  # fmt: skip
        job.refresh_from_db()
        return job
    except Exception as exc:
        # The chunks that committed stay committed (and counted); the next run does the rest.
        logger.exception("job %s (%s) failed", job.pk, job.kind)
        tracker.rolled_back()
        _job_end(job, tracker, status=Job.Status.FAILED, error=f"{type(exc).__name__}: {exc}")
        return job
    _job_end(job, tracker, status=Job.Status.SUCCEEDED, error="")
    return job


def job_attempt(job: Job) -> int:
    """1 for the first run of a job, then one more per takeover of a dead worker's run: a key
    a job writes once per member must name the attempt, as a takeover meets members that a
    committed chunk of an earlier attempt already wrote."""
    return int((job.progress or {}).get("attempt", 1))


def _job_end(job: Job, tracker: "JobTracker", *, status: str, error: str) -> None:
    finished_at = timezone.now()
    ended = tracker.own_row().update(
        status=status,
        error=error[:4000],
        finished_at=finished_at,
        counts=tracker.counts,
        progress={**tracker.progress, "heartbeat": finished_at.isoformat()},
    )
    if not ended:  # failed as abandoned, or taken over, meanwhile: that stands
        logger.warning("job %s (%s) ended %s, but it is no longer this run's", job.pk,
                       job.kind, status)  # fmt: skip
    job.refresh_from_db()


class JobSuperseded(Exception):
    """This run's job was failed as abandoned or taken over by another worker meanwhile:
    the chunk in hand rolls back and the run stops."""


class JobTracker:
    """Counts and progress of a running job, written by each chunk inside its transaction so
    the job row always tells exactly what has committed."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.counts: dict[str, int] = dict(job.counts or {})
        self.progress: dict[str, Any] = dict(job.progress or {})

    def rolled_back(self) -> None:
        """Back to what has committed, after a chunk failed: it may have added its counts (and
        progress) here before its transaction rolled back."""
        row = Job.objects.filter(pk=self.job.pk).values("counts", "progress").first()
        if row is not None:
            self.counts = dict(row["counts"] or {})
            self.progress = dict(row["progress"] or {})

    def add(self, **counts: int) -> None:
        for name, value in counts.items():
            self.counts[name] = self.counts.get(name, 0) + int(value)

    def own_row(self):
        """The job's row while this run still owns it: running, at this run's attempt (a
        takeover raises the attempt; the sweep fails a job whose heartbeat stopped)."""
        attempt = job_attempt(self.job)
        same_attempt = Q(progress__attempt=attempt)
        if attempt == 1:
            same_attempt |= ~Q(progress__has_key="attempt")
        return Job.objects.filter(same_attempt, pk=self.job.pk, status=Job.Status.RUNNING)

    def save(self, **progress: Any) -> None:
        """Call inside the chunk's transaction, after its writes. JobSuperseded when the run
        no longer owns its job: the chunk then rolls back, and the run stops."""
        self.progress.update(progress)
        self.progress["heartbeat"] = timezone.now().isoformat()
        if not self.own_row().update(counts=self.counts, progress=self.progress):
            raise JobSuperseded(str(self.job.pk))


def job_programs(job: Job, *, statuses: Iterable[str] = (Program.Status.ACTIVE,)):
    """The programs a job covers: its own, or every program in one of `statuses`."""
    if job.program_id is not None:
        return [job.program] if job.program.status in statuses else []
    return list(Program.objects.filter(status__in=list(statuses)).order_by("created_at", "pk"))


class PartsFailed(Exception):
    """Some programs (or campaigns) of a job failed; the others ran to the end."""


def each_part(job: Job, tracker: "JobTracker", parts: Iterable, run: Callable[[Any], None]):
    """Runs `run(part)` for each program (or campaign) of a job over many: one that fails is
    logged and listed in the job's progress, the others still run, and the job then ends
    failed (a re-run finishes the failed parts exactly once)."""
    failed: dict[str, str] = {}
    for part in parts:
        try:
            run(part)
        except JobSuperseded:
            raise  # not this part's failure: the run no longer owns its job
        except Exception as exc:
            if job.program_id is not None:
                raise
            logger.exception("job %s: %s %s failed", job.pk, type(part).__name__, part.pk)
            failed[str(part.pk)] = f"{type(exc).__name__}: {exc}"[:500]
            tracker.rolled_back()
            tracker.save(failed=failed)
    if failed:
        raise PartsFailed(f"{len(failed)} failed: " + "; ".join(failed.values())[:2000])


SWEEP_CHUNK = 500


def _sweep(tracker: JobTracker, counter: str, sweep, actor, *, still_due=None) -> None:
    """Runs `sweep` a chunk at a time, saving progress after each, until a chunk comes back
    short and, with `still_due`, nothing is left due: a short chunk alone does not mean done
    when a row it found was settled meanwhile (its sweep counts only what it closed itself).
    A sweep that skips locked rows goes without `still_due`, or a row locked for long would
    keep the job going round."""
    while True:
        done = sweep(actor=actor, limit=SWEEP_CHUNK)
        tracker.add(**{counter: done})
        tracker.save()
        if done < SWEEP_CHUNK and (still_due is None or not still_due()):
            return


def _hold_expiry(*, job: Job, tracker: JobTracker) -> None:
    """Holds past their time-to-live are released, and vouchers past their date expired."""
    from .redemptions import redemptions_due, redemptions_expire_due, vouchers_expire_due

    actor = system_actor(job.kind)
    _sweep(
        tracker, "expired", redemptions_expire_due, actor,
        still_due=lambda: redemptions_due().exists(),
    )  # fmt: skip
    _sweep(tracker, "vouchers_expired", vouchers_expire_due, actor)  # skips locked vouchers


def _approval_expiry(*, job: Job, tracker: JobTracker) -> None:
    from approvals.selectors import approvals_due
    from approvals.services import approvals_expire

    actor = system_actor(job.kind)
    _sweep(tracker, "expired", approvals_expire, actor, still_due=lambda: approvals_due().exists())


def _runners() -> dict[str, Callable[..., None]]:
    from .campaigns import campaigns_execute
    from .expiry import points_expire
    from .tiers import tiers_evaluate

    return {
        Job.Kind.TIER_EVALUATION: tiers_evaluate,
        Job.Kind.POINT_EXPIRY: points_expire,
        Job.Kind.CAMPAIGN_EXECUTION: campaigns_execute,
        Job.Kind.HOLD_EXPIRY: _hold_expiry,
        Job.Kind.APPROVAL_EXPIRY: _approval_expiry,
    }


def audit_many(
    *, actor: Actor, action: str, entity_type: str, merchant_id: str, rows: list[tuple[Any, dict]]
) -> None:
    """One audit entry per changed entity (`rows` of (entity id, after)), inserted together
    inside the caller's transaction, so a job's bulk writes are audited like single writes."""
    if rows:
        entries = audit_entries_build(
            actor=actor,
            action=action,
            entity_type=entity_type,
            merchant_id=merchant_id,
            rows=[(entity_id, None, after) for entity_id, after in rows],
        )
        copy_insert(AuditEntry, entries)


def copy_insert(model: type[models.Model], objs: list) -> None:
    """Inserts model instances of a job's chunk. On PostgreSQL with COPY (about 8x faster
    than `bulk_create` for thousands of rows); integer primary keys are drawn from the table's
    sequence first, so rows written next can point at these. Elsewhere `bulk_create`."""
    if not objs:
        return
    if connection.vendor != "postgresql":
        model.objects.bulk_create(objs, batch_size=500)
        return
    meta = model._meta
    table = meta.db_table
    if isinstance(meta.pk, models.AutoField | models.BigAutoField):
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT nextval(%s::regclass) FROM generate_series(1, %s)",
                [serial_sequence(model), len(objs)],
            )
            for obj, (pk,) in zip(objs, cursor.fetchall(), strict=True):
                obj.pk = pk
    # Columns left to the database's own default (db_default) are not sent.
    fields = [
        f for f in meta.concrete_fields
        if not isinstance(getattr(objs[0], f.attname), DatabaseDefault)
    ]  # fmt: skip
    stamped = [
        f for f in fields if getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False)
    ]
    # psycopg adapts these fields' Python values itself; JSON needs its wrapper. (Django's
    # get_db_prep_save per value costs more than the COPY.)
    attnames = [f.attname for f in fields]
    json_at = [i for i, f in enumerate(fields) if isinstance(f, models.JSONField)]
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    with (
        connection.cursor() as cursor,
        cursor.cursor.copy(
            f"COPY {connection.ops.quote_name(table)} ({columns}) FROM STDIN"
        ) as copy,
    ):
        for obj in objs:
            for field in stamped:
                field.pre_save(obj, add=True)
            row = [getattr(obj, name) for name in attnames]
            for i in json_at:
                row[i] = Jsonb(row[i])
            copy.write_row(row)
    for obj in objs:
        obj._state.adding = False


def bulk_set(model: type[models.Model], objs: list, fields: list[str]) -> None:
    """Writes `fields` of many rows in one UPDATE. On PostgreSQL it joins arrays of the new
    values (`UPDATE ... FROM unnest(...)`), which stays linear where Django's `bulk_update`
    (a CASE per field) grows with the square of the batch; elsewhere it is `bulk_update`."""
    if not objs:
        return
    if connection.vendor != "postgresql":
        model.objects.bulk_update(objs, fields, batch_size=500)
        return
    meta = model._meta
    columns = [meta.pk, *(meta.get_field(name) for name in fields)]
    if any(isinstance(column, models.JSONField) for column in columns):
        model.objects.bulk_update(objs, fields, batch_size=500)  # jsonb[] needs Django's adapter
        return
    # Plain values: psycopg adapts them (Django's per-value preparation costs more here).
    arrays = [[getattr(obj, column.attname) for obj in objs] for column in columns]
    table = connection.ops.quote_name(meta.db_table)
    names = [connection.ops.quote_name(column.column) for column in columns]
    casts = ", ".join(f"%s::{column.db_type(connection)}[]" for column in columns)
    sets = ", ".join(f"{name} = v.{name}" for name in names[1:])
    sql = (
        f"UPDATE {table} AS t SET {sets} FROM unnest({casts}) AS v({', '.join(names)}) "  # noqa: S608 (names from the model)
        f"WHERE t.{names[0]} = v.{names[0]}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, arrays)
