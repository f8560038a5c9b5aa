"""``python -m embench``: the ``embench`` command, for environments without its script."""

from embench.cli import main

if __name__ == "__main__":
    main()
