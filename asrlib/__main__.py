import sys

from asrlib.cli import main

sys.exit(main())
