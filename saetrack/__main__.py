"""`python -m saetrack`: the `saetrack` command, as torchrun launches it (`torchrun ... -m saetrack track ...`).
Written by hand, not exported: nbs/90_cli.ipynb describes it."""
from saetrack.cli import main

if __name__ == "__main__": raise SystemExit(main())
