"""PyTorch reference models with random weights, layout conversions between NHWC numpy arrays and NCHW tensors,
and a reference model's logits under torchvision's evaluation transform: what the parity tests compare with."""

from collections.abc import Callable

import numpy as np
import torch

from jaxkd.pytorch.torch_models import get_torch_model

# torchvision's ToTensor + Normalize with the pytorch-kd recipe's CIFAR-100 constants, written out independently
# of jaxkd.
MEAN = torch.tensor([129.3 / 255, 124.07 / 255, 112.43 / 255], dtype=torch.float32)
STD = torch.tensor([68.17 / 255, 65.39 / 255, 70.42 / 255], dtype=torch.float32)
# RepDistiller's dataset/cifar100.py constants
REPDISTILLER_MEAN_STD = (torch.tensor([0.5071, 0.4867, 0.4408]), torch.tensor([0.2675, 0.2565, 0.2761]))


def randomize_batchnorms(module: torch.nn.Module) -> None:
    """Gives every BatchNorm2d of `module` non-trivial parameters and running statistics (not 1/0), drawn from
    torch's global generator, so that a mapping that swaps or drops one shows."""
    with torch.no_grad():
        for submodule in module.modules():
            if isinstance(submodule, torch.nn.BatchNorm2d):
                submodule.weight.uniform_(0.5, 1.5)
                submodule.bias.uniform_(-0.3, 0.3)
                submodule.running_mean.uniform_(-0.5, 0.5)
                submodule.running_var.uniform_(0.5, 2.0)
                submodule.num_batches_tracked.fill_(1000)


def randomize_batchnorm_and_bias(model: torch.nn.Module, classifier: torch.nn.Linear | None = None) -> None:
    """randomize_batchnorms, and a non-zero bias for the classifier (default: the model's last Linear)."""
    randomize_batchnorms(model)
    if classifier is None:
        classifier = [module for module in model.modules() if isinstance(module, torch.nn.Linear)][-1]
    with torch.no_grad():
        classifier.bias.uniform_(-0.1, 0.1)


def randomized(build: Callable[[], torch.nn.Module], seed: int = 0) -> torch.nn.Module:
    """The model `build()` makes with torch seeded by `seed`, then randomize_batchnorm_and_bias: a reference
    model in which every tensor's mapping matters (any PyTorch class: jaxkd's references, torchvision's,
    RepDistiller's, mdistiller's)."""
    torch.manual_seed(seed)
    model = build()
    randomize_batchnorm_and_bias(model)
    return model


def randomized_torch_model(arch: str, num_classes: int = 100, seed: int = 0) -> torch.nn.Module:
    """The PyTorch reference model of `arch` (jaxkd.pytorch.torch_models.get_torch_model), randomized."""
    return randomized(lambda: get_torch_model(arch, num_classes), seed)


def nchw(images_nhwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))


def nhwc(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().numpy().transpose(0, 2, 3, 1)


def torch_logits(model, images_uint8, mean_std=(MEAN, STD)) -> np.ndarray:
    """The eval-mode logits of a jaxkd PyTorch reference model (it returns (features, logits)) on uint8 NHWC
    images, normalized as torchvision's ToTensor + Normalize(mean_std)."""
    mean, std = mean_std
    x = nchw(images_uint8).float().div(255)
    x = (x - mean[:, None, None]) / std[:, None, None]
    model.eval()
    with torch.no_grad():
        return model(x)[1].numpy()
