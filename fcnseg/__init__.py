"""fcnseg: semantic segmentation of road scenes with FCN-8s and LinkNet.

Importing the package is cheap: TensorFlow is imported only by the modules
that need it (models, data, training), never at ``import fcnseg``.
"""

__version__ = "0.1.0"
