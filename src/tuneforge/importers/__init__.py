"""Importers: other fine-tuning tools' configs and command lines as tuneforge configs, with a report."""
