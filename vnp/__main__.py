import sys

from vnp.cli import main

sys.exit(main())
