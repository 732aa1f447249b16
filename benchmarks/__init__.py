"""Side-by-side benchmarks of composer-core against the backends' own implementations (verl, TRL).

Run `python -m benchmarks.run`; see docs/performance.md for the method and a reading of the numbers.
`python -m benchmarks.guard` times the training guard's own cost per step (benchmarks/guard.py; no baseline).
"""

import os

# trl.experimental warns on import; the benchmark knowingly uses its loss utilities.
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
