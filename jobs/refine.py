"""spark-submit entry point: the refine step (same as `crm-mining run --steps refine`)."""
import sys

from crm_mining.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", "--steps", "refine", *sys.argv[1:]]))
