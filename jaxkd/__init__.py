"""jaxkd: knowledge distillation for CIFAR-scale research in pure JAX, at parity with pytorch-kd."""

__version__ = "0.1.0"
