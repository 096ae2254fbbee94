#!/usr/bin/env python3
"""Nextflow entry point for GARAGE_GENERATE: the same CLI as `garage generate`."""
import sys

from garage.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]], prog_name="garage_generate.py"))
