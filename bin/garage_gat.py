#!/usr/bin/env python3
"""Nextflow entry point for GARAGE_GAT: the same CLI as `garage gat`."""
import sys

from garage.cli import main

if __name__ == "__main__":
    sys.exit(main(["gat", *sys.argv[1:]], prog_name="garage_gat.py"))
