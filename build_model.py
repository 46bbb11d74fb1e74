#!/usr/bin/env python
"""Build the recommendation model: data -> features -> training -> report -> C -> artifact.

With no arguments: generate the seed-like default data into data/, train the
seed's GradientBoostingClassifier, print the report, compile to C, verify the
compiled model against scikit-learn and write artifacts/reco_model/.
See ``python build_model.py --help`` for training on your own log.
"""

import sys

from reco_fast.tools.cli import build_main

if __name__ == "__main__":
    sys.exit(build_main())
