"""torchvision: every classification, detection, segmentation, video and optical-flow model, at its own init.

``torchvision.models.list_models(module=...)`` per task; each built with ``weights=None`` (and
``weights_backbone=None``), few classes and small inputs where the model allows. Models over
:data:`MAX_PARAMS` parameters (from their weights' metadata) are skipped. ``initdiag.audit`` runs models in
train mode, where a detection model needs targets and takes a *list* of images, while the audit passes its
batch's tensors as positional arguments: so :class:`DetectionLosses` feeds the model the batch as a list
with fixed synthetic targets (two boxes per image, their masks and keypoints) and returns its loss dict,
what training differentiates. :class:`FlowUpdates` runs RAFT with a few flow updates (a forward argument).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .catalog import SEED, ModelSpec, seeded

__all__ = ["MAX_PARAMS", "DetectionLosses", "FlowUpdates", "specs"]

MAX_PARAMS = 150_000_000
"""Bigger models (``vit_h_14``, ``regnet_y_128gf``, ``vit_l_*``) are skipped: too big for the 2-core machine."""

_NOT_RESIDUAL = ("alexnet", "vgg", "densenet", "googlenet", "inception", "shufflenet", "squeezenet", "s3d",
                 "ssd300")
_INPUT = {"inception_v3": 299, "maxvit_t": 224}
"""Classification inputs other than 64x64: Inception v3's auxiliary head (train mode) needs its 17x17 grid,
so 299; MaxViT's 7x7 partitions fix 224."""
DET_SIZE, DET_BATCH, FLOW_SIZE, FLOW_BATCH, VIDEO, VIDEO_BATCH = 128, 4, 128, 4, (3, 8, 64, 64), 4


def _targets(height: int, width: int, masks: bool, keypoints: int) -> dict[str, torch.Tensor]:
    """Two fixed boxes (labels 1 and 2; both 1 for keypoints), with their box masks and ``keypoints`` points
    along each box's diagonal."""
    boxes = torch.tensor([[0.1, 0.15, 0.6, 0.7], [0.35, 0.2, 0.95, 0.9]]) * torch.tensor([width, height] * 2)
    target = {"boxes": boxes, "labels": torch.tensor([1, 1] if keypoints else [1, 2])}
    if masks:
        grid = torch.zeros(2, height, width, dtype=torch.uint8)
        for i, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
            grid[i, y0:y1, x0:x1] = 1
        target["masks"] = grid
    if keypoints:
        t = torch.linspace(0.1, 0.9, keypoints)
        points = [torch.stack([b[0] + t * (b[2] - b[0]), b[1] + t * (b[3] - b[1]), torch.ones(keypoints)], 1)
                  for b in boxes]
        target["keypoints"] = torch.stack(points)
    return target


class DetectionLosses(nn.Module):
    """A torchvision detection model fed a batch as a list of images with fixed targets (train mode: its loss
    dict; eval mode: its detections). The model itself is unchanged."""

    def __init__(self, model: nn.Module, masks: bool = False, keypoints: int = 0) -> None:
        super().__init__()
        self.model, self.masks, self.keypoints = model, masks, keypoints

    def forward(self, images: torch.Tensor) -> Any:
        if not self.training:
            return self.model(list(images))
        targets = [_targets(img.shape[-2], img.shape[-1], self.masks, self.keypoints) for img in images]
        return self.model(list(images), targets)


class FlowUpdates(nn.Module):
    """RAFT called as ``model(image1, image2, num_flow_updates=updates)``: its list of flow estimates."""

    def __init__(self, model: nn.Module, updates: int = 3) -> None:
        super().__init__()
        self.model, self.updates = model, updates

    def forward(self, image1: torch.Tensor, image2: torch.Tensor) -> Any:
        return self.model(image1, image2, num_flow_updates=self.updates)


def _params(name: str) -> int:
    import torchvision

    try:
        return int(next(iter(torchvision.models.get_model_weights(name))).meta["num_params"])
    except (ValueError, StopIteration, KeyError):
        return 0


def _builder(name: str, wrap: Callable[[nn.Module], nn.Module] | None = None, **kwargs: Any) -> Callable[[], nn.Module]:
    def create() -> nn.Module:
        import torchvision

        model = torchvision.models.get_model(name, weights=None, **kwargs)
        return wrap(model) if wrap is not None else model

    return seeded(create)


def _images(*shape: int) -> Callable[[nn.Module], tuple[torch.Tensor, ...]]:
    def make(model: nn.Module) -> tuple[torch.Tensor, ...]:
        return (torch.rand(*shape, generator=torch.Generator().manual_seed(SEED)),)

    return make


def _image_pair(model: nn.Module) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(SEED)
    first = torch.rand(FLOW_BATCH, 3, FLOW_SIZE, FLOW_SIZE, generator=gen)
    return first, (first + 0.1 * torch.randn(first.shape, generator=gen)).clamp(0, 1)


def _residual(name: str) -> bool:
    return not name.startswith(_NOT_RESIDUAL)


def _classification(names: list[str]) -> list[ModelSpec]:
    out = []
    for name in names:
        size = _INPUT.get(name, 64)
        kwargs: dict[str, Any] = {"image_size": size} if name.startswith("vit_") else {}  # ViT's size is fixed
        out.append(ModelSpec(f"tv/{name}", "tv", "classification", _builder(name, num_classes=10, **kwargs),
                             input_shape=(3, size, size), residual=_residual(name)))
    return out


def _detection(names: list[str]) -> list[ModelSpec]:
    out = []
    for name in names:
        masks, keypoints = name.startswith("maskrcnn"), 17 if name.startswith("keypointrcnn") else 0
        kwargs: dict[str, Any] = {"weights_backbone": None, "num_classes": 2 if keypoints else 3}
        if "rcnn" in name or name.startswith(("retinanet", "fcos")):
            kwargs.update(min_size=DET_SIZE, max_size=DET_SIZE)
        build = _builder(name, lambda m, a=masks, k=keypoints: DetectionLosses(m, a, k), **kwargs)  # type: ignore[misc]
        out.append(ModelSpec(f"tv/{name}", "tv", "detection", build, example=_images(DET_BATCH, 3, DET_SIZE, DET_SIZE),
                             residual=_residual(name), note="train mode, fixed targets: the loss dict"))
    return out


def specs() -> list[ModelSpec]:
    """Every model of torchvision's classification, detection, segmentation, video and optical-flow lists."""
    import torchvision.models as tvm

    out = [*_classification(tvm.list_models(module=tvm)), *_detection(tvm.list_models(module=tvm.detection))]
    for name in tvm.list_models(module=tvm.segmentation):
        out.append(ModelSpec(f"tv/{name}", "tv", "segmentation",
                             _builder(name, weights_backbone=None, num_classes=3, aux_loss=False),
                             input_shape=(3, 64, 64), loss="ce", residual=_residual(name)))
    for name in tvm.list_models(module=tvm.video):
        native = name.startswith(("s3d", "mvit"))  # S3D's 7x7 pooling, MViT's fixed size: 16 x 224 x 224
        out.append(ModelSpec(f"tv/{name}", "tv", "video", _builder(name, num_classes=10),
                             input_shape=None if native else VIDEO,
                             example=_images(VIDEO_BATCH, 3, 16, 224, 224) if native else None,
                             residual=_residual(name), note="native 16x224x224 clips, one batch" if native else ""))
    for name in tvm.list_models(module=tvm.optical_flow):
        out.append(ModelSpec(f"tv/{name}", "tv", "optical-flow", _builder(name, FlowUpdates), example=_image_pair,
                             note="3 flow updates; loss: mean square of every flow estimate"))
    too_big = {s.id: _params(s.id[3:]) for s in out}
    return [s if too_big[s.id] <= MAX_PARAMS else
            ModelSpec(s.id, s.library, s.kind, s.build, s.input_shape, s.example, residual=s.residual,
                      skip=f"{too_big[s.id] / 1e6:.0f}M parameters: over {MAX_PARAMS / 1e6:.0f}M") for s in out]
