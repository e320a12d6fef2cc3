"""`python -m tuneforge.train CONFIG [key=value ...]`: the `tuneforge train` command, as launchers start it.

    torchrun --nproc-per-node 2 -m tuneforge.train config.yaml
    accelerate launch --num_processes 2 -m tuneforge.train config.yaml
"""

import typer

from tuneforge.cli import train

if __name__ == "__main__":
    typer.run(train)
