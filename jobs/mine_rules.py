"""spark-submit entry point: the basket step (same as `crm-mining run --steps basket`)."""
import sys

from crm_mining.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", "--steps", "basket", *sys.argv[1:]]))
