"""Post-processing of segmentations: a fully connected CRF and connected-component clean-up.

The package is split by what each part does, and every name below is importable from
``medseg.postprocess`` as before the split:

* :mod:`medseg.postprocess.crf`: the fully connected CRF (:func:`dense_crf`): input
  checks, the smoothness kernel, the bilateral grid of the appearance kernel and
  mean-field inference. Its module docstring gives the energy, the filtering, the
  approximation error and the defaults.
* :mod:`medseg.postprocess.cleanup`: the connected-component clean-up
  (:func:`keep_largest_component`, :class:`CleanupDecision`, :func:`apply_cleanup`).
* :mod:`medseg.postprocess.tuning`: choosing both on validation cases by Dice
  (:func:`crf_grid_search`, :func:`select_cleanup`), which ``medseg tune-postprocess``
  (:mod:`medseg.tuning`) runs.

The constants are read where the code that uses them lives: patch
``medseg.postprocess.crf.MAX_GRID_CELLS``, not the copy re-exported here.
"""

from medseg.postprocess.cleanup import (  # noqa: F401  (re-exported: their home is cleanup)
    CleanupCandidate,
    CleanupDecision,
    apply_cleanup,
    keep_largest_component,
)
from medseg.postprocess.crf import (  # noqa: F401  (re-exported: their home is crf)
    DEFAULT_NUM_ITERATIONS,
    DEFAULT_SIGMA_ALPHA_MM,
    DEFAULT_SIGMA_BETA,
    DEFAULT_SIGMA_GAMMA_MM,
    DEFAULT_W_APPEARANCE,
    DEFAULT_W_SMOOTHNESS,
    GRID_CELL,
    GRID_CHUNK,
    MAX_GRID_CELL,
    MAX_GRID_CELLS,
    PROB_FLOOR,
    PROB_SUM_TOLERANCE,
    TRUNCATE,
    _BilateralGrid,
    _grid_cell,
    dense_crf,
)
from medseg.postprocess.tuning import (  # noqa: F401  (re-exported: their home is tuning)
    crf_grid_search,
    select_cleanup,
)
