"""Background jobs over the API: manual triggers (202 + job id), job status, tier rollback."""

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.response import Response

from access.idempotency import idempotent
from access.schema import COMMON_ERRORS, IDEMPOTENCY_KEY, WRITE_ERRORS
from access.scoping import program_get_for_caller, scope_queryset

from ..errors import NotFound, ValidationFailed
from ..models import Job, TierSnapshot
from ..services.jobs import job_enqueue
from ..services.tiers import tier_rollback
from .base import LoyaltyApi, validated
from .fields import Text, iso
from .serializers import StrictInput, TierSnapshotSerializer, tier_snapshot_body

# URL segment -> job kind of the manual triggers.
TRIGGERS = {
    "tier-evaluation": Job.Kind.TIER_EVALUATION,
    "point-expiry": Job.Kind.POINT_EXPIRY,
    "campaign-execution": Job.Kind.CAMPAIGN_EXECUTION,
}


def job_body(job: Job) -> dict:
    return {
        "id": str(job.pk),
        "kind": job.kind,
        "status": job.status,
        "program_id": str(job.program_id) if job.program_id else None,
        "progress": job.progress,
        "counts": job.counts,
        "error": job.error,
        "triggered_by": job.triggered_by,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
    }


class JobSerializer(serializers.Serializer):
    id = serializers.CharField()
    kind = serializers.ChoiceField(choices=Job.Kind.choices)
    status = serializers.ChoiceField(choices=Job.Status.choices)
    program_id = serializers.CharField(allow_null=True, help_text="Null: every program.")
    progress = serializers.DictField()
    counts = serializers.DictField(help_text="What has committed so far (e.g. `upgraded`).")
    error = serializers.CharField()
    triggered_by = serializers.CharField()
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)


class JobQueuedSerializer(serializers.Serializer):
    job_id = serializers.CharField()
    status = serializers.CharField()


class TriggerInputSerializer(StrictInput):
    program_id = serializers.UUIDField(
        required=False, allow_null=True, help_text="One program; every program when absent."
    )


class RollbackInputSerializer(StrictInput):
    reason = Text(max_length=150, required=False, allow_blank=True, default="")


class RollbackSerializer(TierSnapshotSerializer):
    rollback_of = serializers.CharField()


class WorkerTriggerApi(LoyaltyApi):
    """`POST /api/v1/workers/<slug>`; one subclass per job kind (see `trigger_view`)."""

    method_permissions = {"post": "jobs:run"}
    kind: str = ""

    def trigger(self, request):
        data = validated(TriggerInputSerializer, request.data)
        program = None
        if data.get("program_id"):
            program = program_get_for_caller(caller=request.caller, program_id=data["program_id"])
        elif request.caller.merchant_id is not None:
            # A merchant's credential runs jobs over its own programs, one at a time.
            raise ValidationFailed(errors={"program_id": ["Required for a merchant caller."]})
        job = job_enqueue(kind=self.kind, program=program, actor=request.caller.actor)
        return Response({"job_id": str(job.pk), "status": job.status}, status=202)


def trigger_view(slug: str) -> type[WorkerTriggerApi]:
    kind = TRIGGERS[slug]

    class TriggerApi(WorkerTriggerApi):
        @extend_schema(
            operation_id=f"workers_{kind}",
            summary=f"Run the {slug} job now (one program, or every program)",
            parameters=[IDEMPOTENCY_KEY],
            request=TriggerInputSerializer,
            responses={
                202: OpenApiResponse(JobQueuedSerializer, "Queued; poll GET /api/v1/jobs/{id}."),
                **WRITE_ERRORS,
                409: OpenApiResponse(description="`job_already_running` for this program today."),
                503: OpenApiResponse(
                    description="`queue_unavailable`: the job queue is unreachable; the job "
                    "is recorded failed, retry later."
                ),
            },
        )
        @idempotent
        def post(self, request):
            return self.trigger(request)

    TriggerApi.kind = kind
    TriggerApi.__name__ = TriggerApi.__qualname__ = (
        "".join(part.title() for part in slug.split("-")) + "TriggerApi"
    )
    return TriggerApi


TRIGGER_VIEWS = {slug: trigger_view(slug) for slug in TRIGGERS}


class JobDetailApi(LoyaltyApi):
    method_permissions = {"get": "jobs:read"}

    @extend_schema(
        operation_id="jobs_read",
        summary="A job: status, progress, counts, error",
        responses={200: JobSerializer, **COMMON_ERRORS},
    )
    def get(self, request, job_id):
        jobs = Job.objects.all()
        if request.caller.merchant_id is not None:
            jobs = jobs.filter(merchant_id=request.caller.merchant_id)
        job = jobs.filter(pk=job_id).first()
        if job is None:
            raise NotFound("No such job.", job_id=str(job_id))
        return Response(job_body(job))


class TierRollbackApi(LoyaltyApi):
    method_permissions = {"post": "members:adjust"}

    @extend_schema(
        operation_id="tier_snapshots_rollback",
        summary="Roll back a tier change: restore the tier it replaced (once)",
        parameters=[IDEMPOTENCY_KEY],
        request=RollbackInputSerializer,
        responses={201: RollbackSerializer, **WRITE_ERRORS},
    )
    @idempotent
    def post(self, request, snapshot_id):
        data = validated(RollbackInputSerializer, request.data)
        snapshots = scope_queryset(
            TierSnapshot.objects.all(), request.caller, "program__merchant_id"
        )
        if not snapshots.filter(pk=snapshot_id).exists():
            raise NotFound("No such tier snapshot.", snapshot_id=snapshot_id)
        rollback = tier_rollback(
            snapshot_id=snapshot_id, actor=request.caller.actor, reason=data["reason"]
        )
        return Response(
            {**tier_snapshot_body(rollback), "rollback_of": str(rollback.rollback_of_id)},
            status=201,
        )
