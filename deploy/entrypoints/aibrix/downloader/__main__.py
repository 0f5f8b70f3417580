"""``python -m aibrix.downloader --model-uri URI --local-dir DIR``: AIBrix's command, Patio's downloader.

AIBrix documents this command for its runtime image (docs/source/features/runtime.rst, "Model
Downloading"); Patio's image answers it with ``patio.artifacts.cli`` in AIBrix's layout.
"""

import sys

from patio.artifacts.cli import aibrix_main

if __name__ == "__main__":
    sys.exit(aibrix_main())
