from django.core.management.base import BaseCommand, CommandError

from audit.models import AuditEntry, AuditSeal
from audit.verify import audit_verify


class Command(BaseCommand):
    help = (
        "Recomputes every audit entry's digest and every seal's chained digest; names the first "
        "entry or seal that does not match and exits non-zero."
    )

    def add_arguments(self, parser):
        parser.add_argument("--limit", type=int, default=20, help="Findings shown at most.")

    def handle(self, *args, limit, **options):
        findings = audit_verify(limit=limit)
        entries, seals = AuditEntry.objects.count(), AuditSeal.objects.count()
        if not findings:
            self.stdout.write(
                self.style.SUCCESS(f"OK: {entries} audit entries, {seals} seals verified.")
            )
            return
        self.stderr.write(f"FIRST MISMATCH: {findings[0].message}")
        for finding in findings[1:]:
            self.stderr.write(f"MISMATCH: {finding.message}")
        raise CommandError(
            f"{len(findings)} finding(s) over {entries} audit entries and {seals} seals."
        )
