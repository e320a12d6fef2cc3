"""Offline bundles: `tuneforge bundle` builds one (build.py), `tuneforge bundle verify` checks one (verify.py)."""
