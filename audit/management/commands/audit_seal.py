from django.core.management.base import BaseCommand

from audit.services import audit_seal


class Command(BaseCommand):
    help = "Seals the audit entries of finished transactions (repeat until nothing is left)."

    def handle(self, *args, **options):
        sealed = 0
        while (seal := audit_seal()) is not None:
            sealed += 1
            self.stdout.write(str(seal))
        self.stdout.write(self.style.SUCCESS(f"{sealed} seal(s) written."))
