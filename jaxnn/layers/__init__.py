"""The layer constructors (re-exported by `jaxnn`)."""

from jaxnn.layers.activations import ACTIVATIONS as ACTIVATIONS
from jaxnn.layers.activations import Gelu as Gelu
from jaxnn.layers.activations import Identity as Identity
from jaxnn.layers.activations import LeakyRelu as LeakyRelu
from jaxnn.layers.activations import LogSoftmax as LogSoftmax
from jaxnn.layers.activations import Relu as Relu
from jaxnn.layers.activations import Sigmoid as Sigmoid
from jaxnn.layers.activations import Softmax as Softmax
from jaxnn.layers.activations import Softplus as Softplus
from jaxnn.layers.activations import Tanh as Tanh
from jaxnn.layers.conv import Conv2D as Conv2D
from jaxnn.layers.dense import Dense as Dense
from jaxnn.layers.dropout import Dropout as Dropout
from jaxnn.layers.pooling import AvgPool2D as AvgPool2D
from jaxnn.layers.pooling import MaxPool2D as MaxPool2D
from jaxnn.layers.reshape import Flatten as Flatten
