"""CLI command groups registered by tuneforge.cli."""
