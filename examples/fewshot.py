"""Run the ``fewshot`` example (``ziggurat demo fewshot`` does the same; ``--shots 1`` there)."""

from ziggurat.examples import fewshot

if __name__ == "__main__":
    print(fewshot.run())
