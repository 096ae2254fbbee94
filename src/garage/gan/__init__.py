"""Stage 2: the conditional hybrid-input GAN that generates labelled counts.

Public API: :class:`GANConfig`, :data:`TEST_OVERRIDES`, :func:`run_gan`,
:func:`run_generate`, and the AnnData-facing :class:`GarageGAN`
(``setup`` / ``train`` / ``generate`` / ``save`` / ``load``).
"""

from ._config import GANConfig
from ._model import GarageGAN, composition_counts, group_composition
from ._run import TEST_OVERRIDES, run_gan, run_generate

__all__ = ["GANConfig", "TEST_OVERRIDES", "run_gan", "run_generate", "GarageGAN", "composition_counts",
           "group_composition"]
