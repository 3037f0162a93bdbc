import sys

from labfast.cli import main

sys.exit(main())
