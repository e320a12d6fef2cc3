"""`python -m tuneforge.train CONFIG [key=value ...]`: `tuneforge train` as launchers start it, without the CLI layer.

torchrun --nproc-per-node 2 -m tuneforge.train config.yaml
accelerate launch --num_processes 2 -m tuneforge.train config.yaml
"""

import sys
from pathlib import Path

from tuneforge.errors import UserError
from tuneforge.quiet import configure


def main(argv: list[str]) -> int:
    """Train from `CONFIG [key=value ...]`; a UserError is one `error:` line per problem and exit status 2."""
    from rich.console import Console

    from tuneforge.train.launch import train_command

    if not argv or argv[0].startswith("-"):
        print("usage: python -m tuneforge.train CONFIG [key.sub=value ...]", file=sys.stderr)
        return 2
    try:
        return train_command(Path(argv[0]), argv[1:], log=Console(stderr=True, highlight=False).print)
    except UserError as exc:
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    configure()  # quiet unless TUNEFORGE_VERBOSE=1, which `tuneforge --verbose train --nproc N` passes on
    sys.exit(main(sys.argv[1:]))
