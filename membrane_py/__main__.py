"""``python -m membrane_py`` is the ``membrane`` command (handy where the script is not on
PATH, e.g. a Windows venv that was not activated)."""

from membrane_py.cli import app

app(prog_name="membrane")
