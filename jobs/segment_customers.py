"""spark-submit entry point: the segment step (same as `crm-mining run --steps segment`)."""
import sys

from crm_mining.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", "--steps", "segment", *sys.argv[1:]]))
