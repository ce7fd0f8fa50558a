"""spark-submit entry point: the ingest step (same as `crm-mining run --steps ingest`)."""
import sys

from crm_mining.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", "--steps", "ingest", *sys.argv[1:]]))
