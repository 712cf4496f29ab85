import sys

from smoothmax.cli import main

sys.exit(main())
