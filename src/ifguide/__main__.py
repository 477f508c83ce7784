import sys

from ifguide.cli import main

sys.exit(main())
