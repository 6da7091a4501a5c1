"""gmcnn: group-matrix networks, approximately equivariant and parameter-efficient.

Layers, bottom up: :mod:`gmcnn.groups` (finite groups as integer tables) -> :mod:`gmcnn.functional`
(gather-matmul ops) -> :mod:`gmcnn.nn` (GM layers) -> :mod:`gmcnn.models`.
"""

__version__ = "0.1.0"
