"""Importers: other fine-tuning tools' configs and command lines as tuneforge configs, with a report."""

from typing import Literal

# Here, not in convert.py: the CLI's --from choices need them at start-up, without convert's imports (pydantic).
Tool = Literal["llamafactory", "swift"]
TOOLS: tuple[Tool, ...] = ("llamafactory", "swift")
