"""Training benchmark: tokens/s, compile time, peak RSS and MFU of jaxformer (and the PyTorch peers).

    python benchmarks/bench_train.py [--quick] [--no-peers] [--out bench/results.json]

A thin wrapper: the implementation (and every option, see --help) is `jaxformer.bench`, also reachable as
`jaxformer bench`.
"""

import sys

from jaxformer.bench import main

if __name__ == "__main__":
    sys.exit(main())
