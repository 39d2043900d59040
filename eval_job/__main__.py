import sys

from eval_job.cli import main

sys.exit(main())
