"""Run the ``maml`` example (``ziggurat demo maml`` does the same)."""

from ziggurat.examples import maml

if __name__ == "__main__":
    print(maml.run())
