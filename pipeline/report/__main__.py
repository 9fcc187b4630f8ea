"""`python -m pipeline.report`: the comparison report of a sweep (see pipeline.report.compare)."""

import sys

from pipeline.report.compare import main

sys.exit(main())
