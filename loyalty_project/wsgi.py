"""The WSGI application the web process (Procfile) serves."""

import gc
import os

from django.core.wsgi import get_wsgi_application

from loyalty_project.serving import without_process_environment

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "loyalty_project.settings.base")

application = without_process_environment(get_wsgi_application())

# Django and the app are loaded: their ~100,000 long-lived objects leave the cyclic collector's
# generations, which it otherwise walks again and again while a 1,000-event batch allocates
# (15-30 us per batch event measured, bench/batch_profile.py --gc-freeze).
gc.collect()
gc.freeze()
