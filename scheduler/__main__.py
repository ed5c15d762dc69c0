import sys

from .cli import main

# Guarded: the ingestion worker process (multiprocessing "spawn") imports this module again.
if __name__ == "__main__":
    sys.exit(main())
