"""``python -m pyro_implicit.inference COMMAND ...``: the command line as a module, torchrun's entry
(``torchrun --nproc_per_node=K -m pyro_implicit.inference train ARGS``)."""

import sys

from .cli import main

sys.exit(main())
