"""The command line as a child process, for tests that interrupt it with SIGINT (Ctrl-C)."""

from __future__ import annotations

import sys

#: ``membrane`` in a fresh interpreter. SIGINT gets Python's handler back first: a test run
#: started in the background (``make test &``, nohup) inherits an ignored SIGINT, which would
#: otherwise make every Ctrl-C test wait for a process that never hears it.
CLI = [sys.executable, "-c", "import signal; signal.signal(signal.SIGINT, "
       "signal.default_int_handler); from membrane_py.cli import app; app()"]
