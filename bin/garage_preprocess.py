#!/usr/bin/env python3
"""Nextflow entry point for GARAGE_PREPROCESS: the same CLI as `garage preprocess`."""
import sys

from garage.cli import main

if __name__ == "__main__":
    sys.exit(main(["preprocess", *sys.argv[1:]], prog_name="garage_preprocess.py"))
