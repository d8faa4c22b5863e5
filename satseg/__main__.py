"""``python -m satseg`` runs the CLI."""

from satseg.cli import main

if __name__ == "__main__":
    main()
