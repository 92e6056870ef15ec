"""Shared core of gitsieve: configuration, protocol, actor base and git helpers."""
