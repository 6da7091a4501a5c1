"""Models built from GM layers, and baselines."""

from gmcnn.models.baselines import E2CNN, RPP, ConvNet, Lift, RGroup, RGroupTranslation, RSteer
from gmcnn.models.cnn import CNN
from gmcnn.models.dynamics import CNNDynamics, GMDynamics
from gmcnn.models.gmcnn import GMCNN

__all__ = ["CNN", "CNNDynamics", "GMCNN", "GMDynamics", "ConvNet", "E2CNN", "Lift", "RGroup",
           "RGroupTranslation", "RPP", "RSteer"]
