"""The WSGI app of the gunicorn example: a Flask app that names the process that answered.

    gunicorn --config gunicorn.conf.py app:app

Everything handover needs is in gunicorn.conf.py; the app itself knows nothing about it.
"""

import os

from flask import Flask

app = Flask(__name__)


@app.get("/")
def hello():
    # Read at request time: gunicorn's workers are forked after the app was imported.
    return "hello from pid {} (worker {}, generation {})\n".format(
        os.getpid(),
        os.environ.get("HANDOVER_WORKER", "-"),
        os.environ.get("HANDOVER_GENERATION", "-"),
    )
