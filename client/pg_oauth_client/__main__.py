"""``python -m pg_oauth_client`` runs the ``pg-oauth`` command (pg_oauth_command)."""

import sys

from pg_oauth_command import main

sys.exit(main())
