"""``python -m mock_vast_server``: run the mock VAST server (see ``--help``)."""

import sys

from mock_vast_server.server import main

sys.exit(main())
