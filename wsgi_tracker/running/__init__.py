"""Running the tracker: the ``wsgi-tracker`` command and the gunicorn settings it uses."""
