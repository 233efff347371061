"""The WSGI application the web process (Procfile) serves."""

from django.core.wsgi import get_wsgi_application
from django.urls import get_resolver

from loyalty_project.collector import startup_objects_freeze
from loyalty_project.environment import environment_load
from loyalty_project.serving import without_process_environment

environment_load()

application = without_process_environment(get_wsgi_application())

# The URL configuration, and with it every view, serializer and the schema generator (~200
# modules, ~25,000 objects), is otherwise imported by the first request, after the freeze
# below: each full collection of a worker would then walk them all (17-20 ms, measured with
# gc.callbacks in the web workers under bench/api.py), a pause its queued requests wait out.
get_resolver().url_patterns  # noqa: B018 (the access imports them)

# Django and the app are loaded: their ~125,000 long-lived objects leave the cyclic collector's
# generations, which it otherwise walks again and again while a 1,000-event batch allocates
# (15-30 us per batch event measured, bench/batch_profile.py --gc-freeze).
startup_objects_freeze()
