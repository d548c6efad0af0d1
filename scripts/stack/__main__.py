"""`python -m scripts.stack up|down|status [--state-dir var]` (see scripts/stack/cli.py).

Owns: nothing but the entry point. Must not touch: anything (it calls `scripts.stack.cli.main`).
"""
import sys

from scripts.stack.cli import main

sys.exit(main())
