"""GARAGE: synthetic single-cell RNA-seq that keeps rare cell types.

Stage 1 scores cells with a graph attention network and selects seed cells
(rare types get a guaranteed quota); stage 2 trains a conditional GAN whose
generator input mixes noise with those seeds.  Nothing heavy is imported here,
so ``garage --version`` stays instant.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("garage-sc")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
