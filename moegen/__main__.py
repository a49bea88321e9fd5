import sys

from moegen.cli import main

sys.exit(main())
