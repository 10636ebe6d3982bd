"""``python -m bnfold``: the ``bnfold`` command (``bnfold.cli``)."""

from .cli import main

if __name__ == "__main__":
    main()
