"""Patch grids, vectorised patch extraction and reassembly (2.5D and 3D).

Terms (arrays follow ARCHITECTURE.md section 2; a case is ``(C, Z, Y, X)``):

* A **patch spec** (:class:`PatchSpec`) gives the *output* patch size and stride in
  ``(z, y, x)`` voxels along a chosen slice axis, and the number of input slices.
  The 2.5D patches of the U-SegNet paper (Kumar et al. 2018) are
  ``PatchSpec.two_and_half_d(40, 10, num_slices=3)``: a 40×40 window on one slice,
  the slices above and below as extra channels, an in-plane stride of 10. The model
  predicts the centre slice only, so the output patch is ``(1, 40, 40)``.
  A 3D spec (``num_slices=1``, any ``(pz, py, px)``) gives plain N-D patch grids.
* The **grid** (:class:`PatchGrid`) covers every voxel: starts are ``0, s, 2s, ...``
  and one last start flush with the border (``size - patch``) when the regular
  starts stop short of it.
* Out-of-volume neighbour slices at the first and last slice are **padded**:
  ``"reflect"`` mirrors without repeating the edge slice (slice -1 is slice 1, as in
  the U-Net overlap-tile strategy), ``"replicate"`` repeats the edge slice, and
  ``"constant"`` uses zeros.
* **Reassembly** combines overlapping patch predictions into one volume:

  - ``"vote"`` (majority vote): every patch votes for its argmax class at every voxel
    it covers; per-class vote counters are small integers (8 bits each while at most
    255 patches overlap a voxel), packed so one integer add updates all classes at
    once. **Tie rule:** among classes with equal votes the lowest class index wins;
    this is deterministic and the agreement map shows where ties happened (<= 0.5).
  - ``"mean"``: the mean of the softmax probabilities of the overlapping patches.
  - ``"gaussian"``: the same mean weighted by a separable Gaussian centred on each
    patch, sigma = patch size / 8 per axis (the nnU-Net and MONAI choice); axes of
    size 1 get weight 1.

  Reassembly also returns a per-voxel confidence: for ``"vote"`` the **vote
  agreement**, the fraction of votes won by the winning class; for the mean modes the
  mean probability of the winning class.

Predictions stream slab by slab along the slice axis (:func:`predict_sliding_window`),
so peak memory is bounded by the slab, not by the number of patches in the volume.
All functions take numpy arrays or torch tensors (on any device) and return the same
kind.

**Layout.** :mod:`~medseg.patches.grid` (:class:`PatchSpec`, :class:`PatchGrid`, the grids
and the vectorised extraction), :mod:`~medseg.patches.reassembly` (overlap-add, packed vote
counters, Gaussian weights, :class:`Reassembled`, the slab accumulator and
:func:`reassemble_patches`), :mod:`~medseg.patches.sliding_window`
(:func:`predict_sliding_window` and its checks) and ``_backend`` (the numpy/torch helpers
they share); the public names are importable from ``medseg.patches``.
"""

from __future__ import annotations

from medseg.patches.grid import (  # noqa: F401  (re-exported: their home is grid)
    PAD_MODES,
    PatchGrid,
    PatchSpec,
    _pad_indices,
    extract_patches,
    extract_patches_at,
    grid_starts,
    make_grid,
    patches_from_view,
    window_view,
)
from medseg.patches.reassembly import (  # noqa: F401  (re-exported: their home is reassembly)
    GAUSSIAN_SIGMA_SCALE,
    Reassembled,
    _gaussian_weight,
    _VotePacking,
    reassemble_patches,
)
from medseg.patches.sliding_window import (  # noqa: F401  (re-exported: their home is sliding_window)
    DEFAULT_PATCHES_PER_SLAB,
    active_windows,
    predict_sliding_window,
)
