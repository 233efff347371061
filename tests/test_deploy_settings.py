"""The production settings pass Django's deployment checklist with no warning."""

import os
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_production_settings_pass_check_deploy():
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "loyalty_project.settings.production",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "AUDIT_HMAC_KEY": secrets.token_urlsafe(40),
        "ALLOWED_HOSTS": "loyalty.example.com",
        "DATABASE_URL": os.environ.get("DATABASE_URL", "sqlite:///unused.sqlite3"),
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def _production_env(tmp_path, **overrides) -> dict:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "loyalty_project.settings.production",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "AUDIT_HMAC_KEY": secrets.token_urlsafe(40),
        "ALLOWED_HOSTS": "loyalty.example.com",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "STATIC_ROOT": str(tmp_path / "static"),
        "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ.get('PATH', '')}",
        **overrides,
    }


def _procfile(process: str) -> str:
    line = next(
        line for line in (ROOT / "Procfile").read_text().splitlines()
        if line.startswith(f"{process}:")
    )  # fmt: skip
    return line.removeprefix(f"{process}:").strip()


def test_after_the_release_step_the_production_admin_and_api_docs_render(tmp_path):
    """The Procfile's `release` collects the static files the production storage serves by
    their manifest: without it, the admin and the API docs answered 500."""
    env = _production_env(tmp_path)
    release = subprocess.run(  # noqa: S602 (the Procfile's line, as a shell runs it)
        _procfile("release"), shell=True, cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert release.returncode == 0, release.stdout + release.stderr

    page = subprocess.run(
        [sys.executable, "-c",
         "import django; django.setup(); from django.test import Client;"
         " c = Client(HTTP_HOST='loyalty.example.com');"
         " print(c.get('/admin/login/', secure=True).status_code,"
         " c.get('/api/docs/', secure=True).status_code)"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert page.stdout.split() == ["200", "200"], page.stdout + page.stderr


def test_production_refuses_to_start_without_a_real_secret_key(tmp_path):
    for weak in ("", "short", "a" * 60):
        result = subprocess.run(
            [sys.executable, "manage.py", "check"],
            cwd=ROOT, env=_production_env(tmp_path, SECRET_KEY=weak),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode != 0, weak
        assert "SECRET_KEY must be a long random value" in result.stderr, weak


def test_the_settings_module_may_be_named_in_the_env_file(tmp_path):
    """deploy/example.env, copied to .env as it says, names the production settings: read
    before Django picks its settings module (it was read inside the development settings,
    too late, which then ran in production's place)."""
    env = _production_env(tmp_path)
    env_file = tmp_path / ".env"
    env_file.write_text(
        "".join(f"{name}={env.pop(name)}\n" for name in (
            "DJANGO_SETTINGS_MODULE", "SECRET_KEY", "AUDIT_HMAC_KEY", "ALLOWED_HOSTS",
        ))
    )  # fmt: skip
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c",
         "from django.conf import settings; print(settings.SETTINGS_MODULE, settings.DEBUG)"],
        cwd=ROOT, env={**env, "LOYALTY_ENV_FILE": str(env_file)},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.stdout.split()[-2:] == ["loyalty_project.settings.production", "False"], (
        result.stdout + result.stderr
    )


def test_idempotency_keys_kept_less_than_a_day_is_a_configuration_error(settings):
    from django.core.checks import run_checks

    settings.LOYALTY_IDEMPOTENCY_TTL_HOURS = 12
    assert [e.id for e in run_checks()] == ["access.E001"]
    settings.LOYALTY_IDEMPOTENCY_TTL_HOURS = 24
    assert run_checks() == []


def test_program_defaults_out_of_a_programs_bounds_are_a_configuration_error(settings):
    from django.core.checks import run_checks

    settings.LOYALTY_HOLD_TTL_SECONDS, settings.LOYALTY_VOUCHER_VALIDITY_DAYS = 0, 10_000
    assert [e.id for e in run_checks()] == ["loyalty.E001", "loyalty.E002"]


def test_no_env_file_is_no_news_and_a_named_one_missing_is_said(tmp_path, monkeypatch, caplog):
    """`make run` has no .env: nothing to say about it (django-environ logs that a file is
    missing, which the development server prints). A LOYALTY_ENV_FILE that is not there is a
    mistake worth that line."""
    from loyalty_project import environment

    monkeypatch.setattr(environment, "BASE_DIR", tmp_path)  # a project root with no .env
    monkeypatch.delenv("LOYALTY_ENV_FILE", raising=False)
    with caplog.at_level("INFO", logger="environ.environ"):
        environment.env_file_read()
    assert "not found" not in caplog.text
    missing = tmp_path / "absent.env"
    monkeypatch.setenv("LOYALTY_ENV_FILE", str(missing))
    with caplog.at_level("INFO", logger="environ.environ"):
        environment.env_file_read()
    assert f"{missing} not found" in caplog.text
