"""Lua scripts, kept as ``.lua`` files beside the stage that runs them (package data).

>>> "redis.call" in lua("streams", "read.lua")
True
"""

from __future__ import annotations

import functools
from importlib import resources

__all__ = ["lua"]


@functools.cache
def lua(package: str, name: str) -> str:
    """The source of ``<package>/lua/<name>``."""
    return (resources.files(package) / "lua" / name).read_text(encoding="utf-8")
