"""The process environment every entry point (manage.py, the WSGI app, Celery) starts from."""

import os
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent


def env_file() -> Path:
    """The env file: `.env` at the project's root, or the one LOYALTY_ENV_FILE names."""
    return Path(os.environ.get("LOYALTY_ENV_FILE") or BASE_DIR / ".env")


def env_file_read() -> None:
    """Reads the env file into the environment (what the process was given wins). A `.env`
    that is not there is no news (development runs without one); a LOYALTY_ENV_FILE that is
    not there is said (django-environ's warning)."""
    path = env_file()
    if path.exists() or os.environ.get("LOYALTY_ENV_FILE"):
        environ.Env.read_env(path, overwrite=False)


def environment_load() -> None:
    """Reads the env file, then defaults the settings module to the development one. Read
    here, before Django picks its settings module, so that the file may name it too
    (deploy/example.env does)."""
    env_file_read()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "loyalty_project.settings.base")
