"""Memory-augmented anomaly detection: MemAE (Gong et al., ICCV 2019) and its protocols.

    from retaincl.anomaly import load_detector
    scores = load_detector("runs/<run>/models/class3-memae.safetensors").score_files(["x.png"])
"""

from retaincl.anomaly.baselines import ClassMeanScorer, PCAScorer
from retaincl.anomaly.detector import Detector, DetectorError, load_detector
from retaincl.anomaly.memory import MemoryModule, addressing_entropy, hard_shrink_relu
from retaincl.anomaly.metrics import roc_auc
from retaincl.anomaly.model import MemAE, conv_autoencoder, mlp_autoencoder
from retaincl.anomaly.sparsity import addressing_stats

__all__ = [
    "ClassMeanScorer",
    "PCAScorer",
    "addressing_stats",
    "Detector",
    "DetectorError",
    "MemAE",
    "MemoryModule",
    "addressing_entropy",
    "conv_autoencoder",
    "hard_shrink_relu",
    "load_detector",
    "mlp_autoencoder",
    "roc_auc",
]
