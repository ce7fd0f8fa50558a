"""spark-submit entry point: customer 360 and customer value (same as `crm-mining run --steps customer360,value`)."""
import sys

from crm_mining.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", "--steps", "customer360,value", *sys.argv[1:]]))
