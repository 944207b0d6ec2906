"""The method, in the paper's order: read the modules top to bottom.

1. ``backbone``, ``features``: the frozen network's stride-8 and stride-16 maps, 3x3 aggregation
   (step 1 of the inference).
2. ``regions``: each map split into a grid of regions ("patches") and merged back (steps 2, 4).
3. ``coreset``: greedy k-center per region and FAPM's adaptive near / far rule on its covering
   radii; ``memory_builders``: each region's bank from its training vectors (the fit).
4. ``memory``: the banks and their k-NN search, each query in its own region's bank only
   (step 3); ``memory_update``: normal vectors added without a refit.
5. ``scoring``: layer 3 aligned onto the layer-2 grid, the layers fused, the anomaly map and the
   image score (steps 5 to 8).
6. ``anomaly_model``, ``fapm_model``: the whole inference as one ``torch.nn.Module``
   (:class:`FAPMModel`); ``patchcore_model``: the baseline on the same pieces.

``machinery/`` is the repository's own: the greedy within cells for large fits, the calibration
folds, the offline weights, the greedy's thread pool. None of it changes what the method computes.
"""
from .anomaly_model import AnomalyModel
from .backbone import BackboneInfo, FeatureExtractor, create_feature_extractor
from .coreset import GreedyKCenter, coreset_size, far_regions, near_far_sizes
from .fapm_model import FAPMModel
from .features import aggregate, embed
from .memory import BankGroup, LayerMemory
from .memory_builders import build_layer_memory, build_memories
from .memory_update import extend_layer_memory
from .patchcore_model import PatchCoreModel
from .regions import merge_regions, split_regions
from .scoring import Prediction, align_layer, anomaly_map, fuse_layers, image_score, postprocess

__all__ = [
    # 1. features
    "create_feature_extractor", "FeatureExtractor", "BackboneInfo", "embed", "aggregate",
    # 2. regions
    "split_regions", "merge_regions",
    # 3. coreset and the adaptive rule
    "GreedyKCenter", "far_regions", "near_far_sizes", "coreset_size", "build_memories", "build_layer_memory",
    # 4. memory and search
    "LayerMemory", "BankGroup", "extend_layer_memory",
    # 5. scoring
    "align_layer", "fuse_layers", "anomaly_map", "image_score", "postprocess", "Prediction",
    # 6. the modules
    "AnomalyModel", "FAPMModel", "PatchCoreModel",
]
