"""Two more libraries people build models with: segmentation-models-pytorch (smp) and MONAI.

smp: every architecture of ``smp.MODEL_ARCHITECTURES_MAPPING`` on a ResNet-18 encoder (DPT, which needs a ViT
encoder, on timm's ViT-Tiny), plus a U-Net on the smallest encoder (:func:`size_key`) of every encoder
family (the module an encoder comes from), all with ``encoder_weights=None``. MONAI has no registry of
constructors, so :data:`MONAI` is a table of its networks with small 2-D arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from .catalog import ModelSpec, seeded, size_key

__all__ = ["MONAI", "monai_specs", "smp_specs"]

_SMP_NOT_RESIDUAL = ("vgg", "densenet", "inception")
_SMP_ENCODER = {"dpt": "tu-vit_tiny_patch16_224"}
_SMP_INPUT = {"dpt": 224, "pan": 128}
"""Inputs other than 64x64: DPT's ViT encoder is fixed at 224, PAN's pyramid pooling needs 128."""


def _smp(arch: str, encoder: str) -> Callable[[], nn.Module]:
    def create() -> nn.Module:
        import segmentation_models_pytorch as smp

        return smp.create_model(arch, encoder_name=encoder, encoder_weights=None, classes=3)

    return seeded(create)


def _smp_spec(arch: str, encoder: str, size: int = 64) -> ModelSpec:
    return ModelSpec(f"smp/{arch}-{encoder}", "smp", "segmentation", _smp(arch, encoder), input_shape=(3, size, size),
                     loss="ce", residual=not encoder.startswith(_SMP_NOT_RESIDUAL), note=f"{arch} on {encoder}")


def smp_specs() -> list[ModelSpec]:
    """Every smp architecture on ResNet-18, and a U-Net on each encoder family's smallest encoder."""
    import segmentation_models_pytorch as smp
    from segmentation_models_pytorch.encoders import encoders

    out = [_smp_spec(arch, _SMP_ENCODER.get(arch, "resnet18"), _SMP_INPUT.get(arch, 64))
           for arch in smp.MODEL_ARCHITECTURES_MAPPING]
    families: dict[str, list[str]] = {}
    for name, entry in encoders.items():
        families.setdefault(entry["encoder"].__module__.rsplit(".", 1)[-1], []).append(name)
    for family in sorted(families):
        smallest = min(families[family], key=size_key)
        if smallest != "resnet18":
            out.append(_smp_spec("unet", smallest, 96 if family.startswith("inception") else 64))
    return out


MONAI: tuple[tuple[str, str, str, dict[str, Any], tuple[int, ...], bool], ...] = (
    # (name, class, kind, constructor arguments, input shape, residual)
    ("BasicUNet", "BasicUNet", "segmentation",
     {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "features": (8, 8, 16, 32, 64, 8)}, (1, 32, 32), False),
    ("BasicUNetPlusPlus", "BasicUNetPlusPlus", "segmentation",
     {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "features": (8, 8, 16, 32, 64, 8)}, (1, 32, 32), False),
    ("UNet-res2", "UNet", "segmentation", {"spatial_dims": 2, "in_channels": 1, "out_channels": 2,
                                          "channels": (8, 16, 32), "strides": (2, 2), "num_res_units": 2},
     (1, 32, 32), True),
    ("AttentionUnet", "AttentionUnet", "segmentation",
     {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "channels": (8, 16, 32), "strides": (2, 2)},
     (1, 32, 32), False),
    ("SegResNet", "SegResNet", "segmentation", {"spatial_dims": 2, "init_filters": 8, "in_channels": 1,
                                                "out_channels": 2}, (1, 32, 32), True),
    ("DynUNet-res", "DynUNet", "segmentation",
     {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "kernel_size": [3, 3, 3], "strides": [1, 2, 2],
      "upsample_kernel_size": [2, 2], "filters": [8, 16, 32], "res_block": True}, (1, 32, 32), True),
    ("UNETR", "UNETR", "segmentation",
     {"in_channels": 1, "out_channels": 2, "img_size": (32, 32), "spatial_dims": 2, "feature_size": 8,
      "hidden_size": 64, "mlp_dim": 128, "num_heads": 4}, (1, 32, 32), True),
    ("SwinUNETR", "SwinUNETR", "segmentation",
     {"in_channels": 1, "out_channels": 2, "feature_size": 12, "spatial_dims": 2}, (1, 64, 64), True),
    ("MedNeXtS", "MedNeXtS", "segmentation", {"spatial_dims": 2, "in_channels": 1, "out_channels": 2},
     (1, 32, 32), True),
    ("HighResNet", "HighResNet", "segmentation", {"spatial_dims": 2, "in_channels": 1, "out_channels": 2},
     (1, 32, 32), True),
    ("VNet", "VNet", "segmentation", {"spatial_dims": 2, "in_channels": 1, "out_channels": 2}, (1, 32, 32), True),
    ("FlexibleUNet-b0", "FlexibleUNet", "segmentation",
     {"in_channels": 1, "out_channels": 2, "backbone": "efficientnet-b0", "pretrained": False, "spatial_dims": 2},
     (1, 64, 64), True),
    ("DenseNet121", "DenseNet121", "classification", {"spatial_dims": 2, "in_channels": 1, "out_channels": 10},
     (1, 64, 64), False),
    ("SEResNet50", "SEResNet50", "classification", {"spatial_dims": 2, "in_channels": 1, "num_classes": 10},
     (1, 64, 64), True),
    ("EfficientNetBN-b0", "EfficientNetBN", "classification",
     {"model_name": "efficientnet-b0", "spatial_dims": 2, "in_channels": 1, "num_classes": 10, "pretrained": False},
     (1, 64, 64), True),
    ("ViT", "ViT", "classification",
     {"in_channels": 1, "img_size": (32, 32), "patch_size": (4, 4), "spatial_dims": 2, "hidden_size": 64,
      "mlp_dim": 128, "num_layers": 2, "num_heads": 4, "classification": True, "num_classes": 10}, (1, 32, 32), True),
    ("Classifier", "Classifier", "classification",
     {"in_shape": (1, 32, 32), "classes": 10, "channels": (8, 16), "strides": (2, 2)}, (1, 32, 32), False),
    ("AutoEncoder", "AutoEncoder", "autoencoder", {"spatial_dims": 2, "in_channels": 1, "out_channels": 1,
                                                   "channels": (8, 16), "strides": (2, 2)}, (1, 32, 32), False),
    ("VarAutoEncoder", "VarAutoEncoder", "autoencoder",
     {"spatial_dims": 2, "in_shape": (1, 32, 32), "out_channels": 1, "latent_size": 8, "channels": (8, 16),
      "strides": (2, 2)}, (1, 32, 32), False),
)
"""MONAI networks: (id name, class in ``monai.networks.nets``, kind, small 2-D arguments, input, residual)."""


def _monai(cls: str, kwargs: dict[str, Any]) -> Callable[[], nn.Module]:
    def create() -> nn.Module:
        from monai.networks import nets

        return getattr(nets, cls)(**kwargs)

    return seeded(create)


def monai_specs() -> list[ModelSpec]:
    """Every network of :data:`MONAI`."""
    import monai  # noqa: F401  (an ImportError here marks the library as not installed)

    loss = {"segmentation": "ce", "classification": "auto", "autoencoder": "mse"}
    return [ModelSpec(f"monai/{name}", "monai", kind, _monai(cls, kwargs), input_shape=shape, loss=loss[kind],
                      residual=residual) for name, cls, kind, kwargs, shape, residual in MONAI]
