"""GARAGE benchmarks: speed/memory of each stage, and the method comparison."""
