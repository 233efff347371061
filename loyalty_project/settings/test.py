"""Test settings: base settings, with tasks run in-process unless a test starts a worker."""

from .base import *  # noqa: F403

CELERY_TASK_ALWAYS_EAGER = True
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
