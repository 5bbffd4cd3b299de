"""`python -m toolservers corpus|index|serve|demo tools`: the tool servers' own command.

The same verbs and flags as `toolgym corpus|index|serve`, without envs, rollout or trainer:
a tool server never loads the training stack or the environment plugins.
"""

import sys

from toolservers.cli import main

if __name__ == "__main__":
    sys.exit(main())
