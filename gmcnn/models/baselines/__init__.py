"""The models GM is compared against on the dynamics tasks (Wang, Walters, Yu 2022), one module
each; the C4-steerable kernels they share are in steerable.py (docs/design.md §3.3)."""

from gmcnn.models.baselines.convnet import ConvNet
from gmcnn.models.baselines.e2cnn import E2CNN
from gmcnn.models.baselines.lift import Lift
from gmcnn.models.baselines.rgroup import RGroup
from gmcnn.models.baselines.rgroup_translation import RGroupTranslation
from gmcnn.models.baselines.rpp import RPP
from gmcnn.models.baselines.rsteer import RSteer

__all__ = ["ConvNet", "E2CNN", "Lift", "RGroup", "RGroupTranslation", "RPP", "RSteer"]
