"""Customer segmentation: clustering per domain, readable segment profiles, stable ids.

The room of the ``segment`` step. ``model`` holds the feature Pipeline and the clustering fits
(k sweep, choice of k, reseed stability), ``profiles`` the segment profiles, names and
assignments, ``stability`` the id alignment across runs and the migration matrix, ``step``
the step itself (:func:`run`) and :func:`fit_segments`, the whole fit for one domain.
"""
from .model import choose_k, feature_caps, feature_pipeline, reseed_stability, sweep_k
from .profiles import segment_name, segment_profiles
from .stability import align_segments, segment_migration
from .step import SegmentSettings, customer_features, fit_segments, run

__all__ = ["align_segments", "choose_k", "customer_features", "feature_caps", "feature_pipeline",
           "fit_segments", "reseed_stability", "run", "segment_migration", "segment_name",
           "segment_profiles", "SegmentSettings", "sweep_k"]
