"""Trace replay of GPU placement policies (FGD methodology); see benchmarks/trace/.

    python benchmarks/trace_replay.py --nodes NODES.csv --pods PODS.csv [--seeds 10]
        [--policies Random DotProd GpuPacking BestFit FGD] [--out DIR]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.trace.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
