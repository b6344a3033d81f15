"""Run the ``nas`` example (``ziggurat demo nas`` does the same)."""

from ziggurat.examples import nas

if __name__ == "__main__":
    print(nas.run())
