"""Validates the PyTorch reference itself (no pcmoe binary needed): see selfcheck.py.

  /usr/bin/python3 tests/reference/test_selfcheck.py [--check ... --pcmoe ...]   (args ignored)
"""
import sys

import selfcheck

if __name__ == "__main__":
    sys.exit(selfcheck.main())
