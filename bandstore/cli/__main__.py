import sys

from bandstore.cli.main import main

sys.exit(main())
