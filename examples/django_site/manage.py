#!/usr/bin/env python
"""``python examples/django_site/manage.py runserver``: Django's command line for the example."""

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    # The example lives inside the repository: make ``examples.django_site`` importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_site.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
