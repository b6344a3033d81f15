"""Run the ``hpo`` example (``ziggurat demo hpo`` does the same)."""

from ziggurat.examples import hpo

if __name__ == "__main__":
    print(hpo.run())
