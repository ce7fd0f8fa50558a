"""spark-submit entry point: the whole pipeline (same as `crm-mining run`).

    spark-submit jobs/run_pipeline.py --config conf/online_retail.yaml --as-of 2011-12-10
"""
import sys

from crm_mining.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
