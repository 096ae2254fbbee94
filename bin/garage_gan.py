#!/usr/bin/env python3
"""Nextflow entry point for GARAGE_GAN: the same CLI as `garage gan`."""
import sys

from garage.cli import main

if __name__ == "__main__":
    sys.exit(main(["gan", *sys.argv[1:]], prog_name="garage_gan.py"))
