"""`python -m lorakit` runs the CLI."""

from lorakit.cli.app import main

if __name__ == "__main__":  # importing the module (an import check walking the package) runs nothing
    main()
