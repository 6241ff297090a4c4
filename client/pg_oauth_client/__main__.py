import sys

from pg_oauth_client.cli import main

sys.exit(main())
