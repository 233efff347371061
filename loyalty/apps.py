from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _roles_refresh(sender, using="default", apps=None, **kwargs):
    """After each app's migrations (and their permissions) are in: the staff role groups get
    exactly the permissions `loyalty.roles` gives them, so a deployment's `migrate` (the
    Procfile's release step) brings a changed role up to date, not only the demo."""
    from django.apps import apps as installed
    from django.contrib.auth.models import Permission

    from .roles import roles_install

    # Once per migrate: the signal comes for every app, and the last app's comes after every
    # app's permissions exist (auth's handler for it ran first).
    if sender is not list(installed.get_app_configs())[-1] or using != "default":
        return
    if apps is not None:  # a partial migrate (`migrate contenttypes`): auth may not exist yet
        try:
            apps.get_model("auth", "Group")
            apps.get_model("loyalty", "Program")
        except LookupError:
            return
    if Permission.objects.exists():
        roles_install()


class LoyaltyConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "loyalty"

    def ready(self):
        from . import checks  # noqa: F401  (registers them)

        post_migrate.connect(_roles_refresh, dispatch_uid="loyalty_roles_refresh")
