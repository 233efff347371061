from django.core.management.base import BaseCommand, CommandError

from loyalty.models import MemberBalance
from loyalty.verify import CHECKS, ledger_verify
from loyalty_project.arguments import findings_limit


class Command(BaseCommand):
    help = (
        "Checks balance == sum(ledger), locked == sum(open holds) and lots for every member, "
        "and that no program's budget allocates past its limit."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--limit", type=findings_limit, default=100, help="Rows shown per check (>= 1)."
        )

    def handle(self, *args, limit, **options):
        mismatches = ledger_verify(limit=limit)
        members = MemberBalance.objects.count()
        if not mismatches:
            self.stdout.write(
                self.style.SUCCESS(f"OK: {len(CHECKS)} checks over {members} members.")
            )
            return
        for mismatch in mismatches:
            self.stderr.write(f"MISMATCH {mismatch.check}: {mismatch.row}")
        raise CommandError(f"{len(mismatches)} mismatch(es) found over {members} members.")
