"""Run the ``reweight`` example (``ziggurat demo reweight`` does the same)."""

from ziggurat.examples import reweight

if __name__ == "__main__":
    print(reweight.run())
