"""Neural-network layers on functions over finite groups."""

from gmcnn.nn.base import EquivariantModule, GroupMatrixLayer
from gmcnn.nn.blocks import ConvNormAct, GlobalMaxTail, ResidualBlock, ResidualStream, set_fast_path
from gmcnn.nn.conv import GMConv
from gmcnn.nn.lifting import GMLifting, GMProjection
from gmcnn.nn.linear import GMLinear
from gmcnn.nn.pointwise import PointwiseConv
from gmcnn.nn.pool import GMPool, GMUnpool
from gmcnn.nn.relaxation import AdditiveRelaxation, MultiplicativeRelaxation, Relaxation, relaxation_penalty

__all__ = ["EquivariantModule", "GroupMatrixLayer", "GMConv", "GMLinear", "GMPool", "GMUnpool", "PointwiseConv",
           "GMLifting", "GMProjection", "AdditiveRelaxation", "MultiplicativeRelaxation", "Relaxation",
           "relaxation_penalty",
           "ConvNormAct", "ResidualBlock", "ResidualStream", "GlobalMaxTail", "set_fast_path"]
