#!/usr/bin/env python3
"""Nextflow entry point for GARAGE_EVALUATE: the same CLI as `garage evaluate`."""
import sys

from garage.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]], prog_name="garage_evaluate.py"))
