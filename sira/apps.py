from django.apps import AppConfig


class SiraConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "sira"
