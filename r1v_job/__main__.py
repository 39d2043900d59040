import sys

from .grpo import main

sys.exit(main())
