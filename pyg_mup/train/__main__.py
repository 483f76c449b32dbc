"""``python -m pyg_mup.train [flags]`` is ``pyg-mup train [flags]`` (and what torchrun runs)."""

import sys

from pyg_mup.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
