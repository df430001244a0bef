"""The cdsim sample application: a Flask app serving one page."""
from flask import Flask

from .page import PAGE

app = Flask(__name__)


@app.get("/")
def index() -> str:
    return PAGE
