"""`python -m roberta_deploy` runs the command line, as the `roberta-deploy` script does."""

from .cli import main

if __name__ == "__main__":
    main()
