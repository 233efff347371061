from django.apps import AppConfig


class AccessConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "access"
    verbose_name = "API access"

    def ready(self) -> None:
        # Registers the OpenAPI descriptions of our authentication classes, and the checks.
        from . import checks, schema  # noqa: F401
