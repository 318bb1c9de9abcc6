"""`python -m hfpipe ...` (so `accelerate launch -m hfpipe train ...` works)."""

from hfpipe.cli import main

if __name__ == "__main__":
    main()
