"""`manage.py apikey_create --merchant m_123 --name checkout [--permission events:write ...]`

Prints the key once: only its hash is stored.
"""

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from access.models import MerchantAPIKey
from access.permissions import API_KEY_DEFAULT_PERMISSIONS, API_KEY_PERMISSIONS
from loyalty.models import Merchant


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

    @transaction.atomic
    def handle(self, *args, merchant, name, permissions, **options):
        merchant_obj, _ = Merchant.objects.get_or_create(id=merchant)
        api_key = MerchantAPIKey(
            merchant=merchant_obj,
            name=name,
            permissions=sorted(set(permissions or API_KEY_DEFAULT_PERMISSIONS)),
            created_by="manage.py",
        )
        try:
            api_key.full_clean(exclude=["id", "hashed_key", "prefix"])
        except ValidationError as exc:
            raise CommandError(str(exc.message_dict)) from exc
        key = MerchantAPIKey.objects.assign_key(api_key)
        api_key.save()
        self.stderr.write(
            f"Created key {api_key.prefix} for merchant {merchant} with permissions "
            f"{', '.join(api_key.permissions)}. It is shown once; store it now."
        )
        self.stdout.write(key)
