"""`python -m scripts.simulator [...]` (see scripts/simulator/cli.py for the options).

Owns: nothing but the entry point. Must not touch: anything (it calls `scripts.simulator.cli.main`).
"""
import sys

from scripts.simulator.cli import main

sys.exit(main())
