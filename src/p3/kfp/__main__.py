"""``python -m p3.kfp math|apps …``: the pipelines' command line where ``pipelines/`` is not
copied (the images install only the package); the same as ``python pipelines/p3_<task>.py …``."""

import sys

from p3.kfp.builder import TASKS
from p3.kfp.entry import main

if len(sys.argv) < 2 or sys.argv[1] not in TASKS:
    sys.exit(f"usage: python -m p3.kfp {{{','.join(TASKS)}}} [--compile|--local|--submit|--schedule CRON] …")
sys.exit(main(sys.argv.pop(1)))
