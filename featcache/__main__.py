"""`python -m featcache ...` (also what `torchrun -m featcache` runs)."""

from featcache.cli import main

if __name__ == "__main__":
    main()
