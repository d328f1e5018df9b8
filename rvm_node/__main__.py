"""``python -m rvm_node`` runs the ``rvm-node`` command line."""

import sys

from rvm_node.cli import main

sys.exit(main())
