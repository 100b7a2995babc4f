import sys

from o2f.cli import main

sys.exit(main())
