"""Permutation alignment (Git Re-Basin, Ainsworth et al. 2022): networks from different
initialisations compared modulo a permutation of their hidden units.

spec = permutation_spec(model, inputs)               # groups derived from the traced network
perm = weight_matching(spec, weights_a, weights_b)   # or activation_matching(model, ..., batches, spec)
weights, mask = apply_permutation(spec, perm, weights_b, mask_b)
check_function(model, weights_b, weights, x)         # raises LmcError if the function changed
result = align_states(model, inputs, a, b, x)        # all of the above on two States
"""

from lmctrack.engine.align.matching import activation_matching, weight_matching
from lmctrack.engine.align.permute import (
    Permutation,
    apply_permutation,
    identity_permutation,
    invert_permutation,
    random_permutation,
)
from lmctrack.engine.align.spec import PermutationSpec, permutation_spec
from lmctrack.engine.align.states import METHODS, Alignment, align_states, check_function

__all__ = [
    "METHODS",
    "Alignment",
    "Permutation",
    "PermutationSpec",
    "activation_matching",
    "align_states",
    "apply_permutation",
    "check_function",
    "identity_permutation",
    "invert_permutation",
    "permutation_spec",
    "random_permutation",
    "weight_matching",
]
