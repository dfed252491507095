"""byol: BYOL self-supervised pretraining and mmselfsup's evaluation suite."""

__version__ = "0.1.0"
