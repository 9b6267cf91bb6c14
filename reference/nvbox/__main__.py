"""``python -m nvbox``: the nvbox command (see nvbox.cli)."""

from .cli import main

if __name__ == "__main__":
    main()
