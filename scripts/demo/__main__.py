"""`python -m scripts.demo [...]`, `make demo` (see scripts/demo/cli.py for the options).

Owns: nothing but the entry point. Must not touch: anything (it calls `scripts.demo.cli.main`).
"""
import sys

from scripts.demo.cli import main

sys.exit(main())
