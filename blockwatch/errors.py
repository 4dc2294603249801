"""Errors of the command line's own making, importable without loading the config machinery."""

from __future__ import annotations


class ConfigError(Exception):
    """The configuration is wrong; the message says where and what."""
