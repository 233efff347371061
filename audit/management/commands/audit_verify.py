import argparse

from django.core.management.base import BaseCommand, CommandError

from audit.models import AuditEntry, AuditSeal
from audit.verify import audit_verify
from loyalty_project.arguments import findings_limit


class Command(BaseCommand):
    help = (
        "Recomputes every audit entry's digest and every seal's chained digest; names the first "
        "entry or seal that does not match and exits non-zero."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--limit", type=findings_limit, default=20, help="Findings shown at most (>= 1)."
        )
        parser.add_argument(
            "--anchor",
            action="append",
            default=[],
            type=_anchor,
            metavar="SEQ:DIGEST",
            help="A seal recorded outside the database (the seal job logs each one, and this "
            "command prints the newest): it must still be there with this digest. Repeatable.",
        )

    def handle(self, *args, limit, anchor, **options):
        findings = audit_verify(limit=limit, anchors=tuple(anchor))
        entries, seals = AuditEntry.objects.count(), AuditSeal.objects.count()
        if not findings:
            self.stdout.write(
                self.style.SUCCESS(f"OK: {entries} audit entries, {seals} seals verified.")
            )
            newest = AuditSeal.objects.order_by("-seq").first()
            if newest is not None:
                self.stdout.write(
                    f"Newest seal: --anchor {newest.seq}:{newest.digest} (keep it outside the "
                    "database and pass it next time: deleted seals then show)."
                )
            return
        self.stderr.write(f"FIRST MISMATCH: {findings[0].message}")
        for finding in findings[1:]:
            self.stderr.write(f"MISMATCH: {finding.message}")
        raise CommandError(
            f"{len(findings)} finding(s) over {entries} audit entries and {seals} seals."
        )


def _anchor(text: str) -> tuple[int, str]:
    seq, _, digest = text.partition(":")
    if not seq.isdigit() or len(digest) != 64:
        raise argparse.ArgumentTypeError("SEQ:DIGEST, a seal number and its 64-hex digest")
    return int(seq), digest.lower()
