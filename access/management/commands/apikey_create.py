"""`manage.py apikey_create --merchant m_123 --name checkout [--permission events:write ...]`

Prints the key once: only its hash is stored. Audited (`api_key.create`, actor
`system:apikey_create`).
"""

from django.core.management.base import BaseCommand, CommandError

from access.permissions import API_KEY_DEFAULT_PERMISSIONS, API_KEY_PERMISSIONS
from access.services import apikey_create
from loyalty.actors import Actor
from loyalty.errors import ValidationFailed

ACTOR = Actor(id="system:apikey_create", role="system", user_agent="manage.py apikey_create")


class Command(BaseCommand):
    help = "Creates a merchant API key and prints it once."

    def add_arguments(self, parser):
        parser.add_argument("--merchant", required=True, help="Merchant id, e.g. m_123.")
        parser.add_argument("--name", required=True, help="What the key is for.")
        parser.add_argument(
            "--permission",
            action="append",
            dest="permissions",
            help=f"Repeat for each; default: {', '.join(API_KEY_DEFAULT_PERMISSIONS)}. "
            f"Grantable: {', '.join(sorted(API_KEY_PERMISSIONS))}.",
        )

    def handle(self, *args, merchant, name, permissions, **options):
        try:
            api_key, key = apikey_create(
                merchant_id=merchant,
                name=name,
                permissions=permissions or list(API_KEY_DEFAULT_PERMISSIONS),
                created_by="manage.py",
                actor=ACTOR,
            )
        except ValidationFailed as exc:
            raise CommandError(str(exc.errors)) from exc
        self.stderr.write(
            f"Created key {api_key.prefix} for merchant {merchant} with permissions "
            f"{', '.join(api_key.permissions)}. It is shown once; store it now."
        )
        self.stdout.write(key)
