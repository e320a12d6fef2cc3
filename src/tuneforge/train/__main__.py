"""`python -m tuneforge.train CONFIG [key=value ...]`: the `tuneforge train` command, as launchers start it.

torchrun --nproc-per-node 2 -m tuneforge.train config.yaml
accelerate launch --num_processes 2 -m tuneforge.train config.yaml
"""

import typer

from tuneforge.cli import train
from tuneforge.quiet import configure

if __name__ == "__main__":
    configure()  # quiet unless TUNEFORGE_VERBOSE=1, which `tuneforge --verbose train --nproc N` passes on
    typer.run(train)
