"""jaxnn: functional neural networks on JAX.

This module only re-exports the public names; each concept lives in its own module.
"""

from jaxnn import initializers as initializers
from jaxnn import losses as losses
from jaxnn import manual as manual
from jaxnn.combinators import FanInConcat as FanInConcat
from jaxnn.combinators import FanInSum as FanInSum
from jaxnn.combinators import FanOut as FanOut
from jaxnn.combinators import Residual as Residual
from jaxnn.combinators import parallel as parallel
from jaxnn.combinators import serial as serial
from jaxnn.layer import Layer as Layer
from jaxnn.layer import ShapeError as ShapeError
from jaxnn.layers import AvgPool2D as AvgPool2D
from jaxnn.layers import BatchNorm as BatchNorm
from jaxnn.layers import Conv1D as Conv1D
from jaxnn.layers import Conv2D as Conv2D
from jaxnn.layers import Conv2DTranspose as Conv2DTranspose
from jaxnn.layers import Dense as Dense
from jaxnn.layers import Dropout as Dropout
from jaxnn.layers import Elu as Elu
from jaxnn.layers import Flatten as Flatten
from jaxnn.layers import Gelu as Gelu
from jaxnn.layers import GlobalAvgPool as GlobalAvgPool
from jaxnn.layers import GroupNorm as GroupNorm
from jaxnn.layers import Identity as Identity
from jaxnn.layers import LayerNorm as LayerNorm
from jaxnn.layers import LeakyRelu as LeakyRelu
from jaxnn.layers import LogSoftmax as LogSoftmax
from jaxnn.layers import MaxPool2D as MaxPool2D
from jaxnn.layers import Relu as Relu
from jaxnn.layers import Selu as Selu
from jaxnn.layers import Sigmoid as Sigmoid
from jaxnn.layers import Silu as Silu
from jaxnn.layers import Softmax as Softmax
from jaxnn.layers import Softplus as Softplus
from jaxnn.layers import SumPool2D as SumPool2D
from jaxnn.layers import Tanh as Tanh
from jaxnn.losses import Loss as Loss
from jaxnn.losses import binary_cross_entropy as binary_cross_entropy
from jaxnn.losses import mse as mse
from jaxnn.losses import sigmoid_binary_cross_entropy as sigmoid_binary_cross_entropy
from jaxnn.losses import softmax_cross_entropy as softmax_cross_entropy
from jaxnn.summary import param_count as param_count
from jaxnn.summary import summary as summary

__version__ = "0.1.0"
