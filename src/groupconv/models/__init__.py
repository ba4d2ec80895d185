"""The model zoo: a timm-like registry of the networks that made grouped convolution, one file per family.

    >>> from groupconv import models
    >>> models.list_models("shufflenet_g3_*")
    ['shufflenet_g3_w1', 'shufflenet_g3_w2', 'shufflenet_g3_w3d2', 'shufflenet_g3_w3d4', 'shufflenet_g3_wd2', 'shufflenet_g3_wd4']
    >>> model = models.create_model("shufflenet_g3_w1", num_classes=10, small_input=True)

Families: alexnet (filter groups), resnext (ImageNet, torchvision-compatible), resnext_cifar
(ResNeXt-29, block forms a/b/c), shufflenet (v1, every buildable group count and width),
mobilenet (v1), nin (NiN for CIFAR-10 with Deep Roots' root filter groups), and the families that followed:
shufflenet_v2, mobilenet_v2 and regnet (torchvision-compatible), convnext (timm-compatible). Models made for training
studies carry tags (see registry): shufflenet_compact (the ShuffleNet unit in a short stack, "study")
and cnn1d (MNIST-1D's CNN baseline and a shuffled grouped 1-D CNN, "1d"). Every convolution is a
groupconv.nn layer, so every model runs on groupconv's dispatcher; models whose blocks have a residual
branch to zero at the start have zero_init_last() (as timm's).
"""

from . import (alexnet, cnn1d, convnext, mobilenet, mobilenet_v2, nin, regnet, resnext, resnext_cifar, shufflenet,
               shufflenet_compact, shufflenet_v2)
from .registry import (SMALL_INPUT_SIZE, TAGS, ModelEntry, Recipe, create_model, is_model, list_models, model_entry,
                       register_model)

__all__ = [
    "SMALL_INPUT_SIZE", "TAGS", "ModelEntry", "Recipe", "alexnet", "cnn1d", "convnext", "create_model", "is_model",
    "list_models", "mobilenet", "mobilenet_v2", "model_entry", "nin", "regnet", "register_model", "resnext",
    "resnext_cifar", "shufflenet", "shufflenet_compact", "shufflenet_v2",
]
