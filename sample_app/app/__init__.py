"""The cdsim sample application: a Flask app serving one page.

Where Flask is not installed for the Python that serves it (hooks run with the agent service's
environment, so that is the instance's system ``python3``, and a cdsim instance has no network to
install it), ``app`` is the same page as a plain WSGI callable from the standard library.
"""
from .page import PAGE
from .page import application as plain_application

try:
    from flask import Flask
except ImportError:
    app = plain_application
else:
    app = Flask(__name__)

    @app.get("/")
    def index() -> str:
        return PAGE
