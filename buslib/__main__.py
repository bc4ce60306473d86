import sys

from buslib.cli import main

sys.exit(main())
