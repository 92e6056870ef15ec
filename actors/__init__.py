"""The gitsieve pipeline: one module per actor, each runnable as ``python -m gitsieve.actors.<name>``."""
