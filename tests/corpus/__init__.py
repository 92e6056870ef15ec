"""Labelled change cases for ``gitsieve test`` (common.accuracy); see cases.py."""
