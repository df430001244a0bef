# The WSGI entry point of the cdsim sample app (installed to /var/www/sample-app/app.wsgi).
# Apache's mod_wsgi loads this file, and so does the Python fallback server (serve.py):
# both need a module-level callable named ``application``.
import os
import sys

# the application package is installed with the rest of the revision under the app user's home
APP_HOME = os.environ.get("SAMPLE_APP_HOME", "/home/ec2-user/sample-app")
if APP_HOME not in sys.path:
    sys.path.insert(0, APP_HOME)

from app import app as application  # noqa: E402  (the path must be set first)
