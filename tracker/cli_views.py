"""Placeholder: commands are added by their issue."""

from __future__ import annotations
