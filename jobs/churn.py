"""spark-submit entry point: the churn step (`--mode train|score|both`, default churn.mode)."""
import sys

from crm_mining.cli import main


def _argv(args):
    """Turn `--mode X` into `--set churn.mode=X`; pass everything else through."""
    out, rest = [], list(args)
    while rest:
        arg = rest.pop(0)
        if arg == "--mode" and rest:
            out += ["--set", f"churn.mode={rest.pop(0)}"]
        elif arg.startswith("--mode="):
            out += ["--set", f"churn.mode={arg.split('=', 1)[1]}"]
        else:
            out.append(arg)
    return out


if __name__ == "__main__":
    sys.exit(main(["run", "--steps", "churn", *_argv(sys.argv[1:])]))
