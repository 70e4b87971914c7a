#!/usr/bin/env python
"""Convert an original Parrot checkpoint (AIDC-AI/Parrot-7B / Parrot-14B format) to transformers-native Parrot.

Thin wrapper over `transformers_parrot.conversion` (also installed as the `parrot-convert` console script):

    python conversion/convert_parrot_weights_to_hf.py --input AIDC-AI/Parrot-7B --output Parrot-7B-hf \
        --dtype bfloat16 --verify [--push_to_hub me/Parrot-7B-hf]

See conversion/README.md.
"""

import sys

from transformers_parrot.conversion import main

if __name__ == "__main__":
    sys.exit(main())
