"""Run the ``three_level`` example (``ziggurat demo three_level`` does the same)."""

from ziggurat.examples import three_level

if __name__ == "__main__":
    print(three_level.run())
