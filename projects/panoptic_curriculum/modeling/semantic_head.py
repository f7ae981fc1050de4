"""The DeepLabV3+ semantic decoder, as detectron2's DeepLab project builds it, usable on any
input size."""

from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from detectron2.projects.deeplab import DeepLabV3PlusHead

__all__ = ["DeepLabV3PlusAnySizeHead"]


@SEM_SEG_HEADS_REGISTRY.register()
class DeepLabV3PlusAnySizeHead(DeepLabV3PlusHead):
    """detectron2's :class:`DeepLabV3PlusHead` (ASPP on the coarsest feature, low-level skip
    connections from the finer ones) with global image pooling in ASPP.

    detectron2's version sizes the ASPP pooling window from ``INPUT.CROP.SIZE``, which breaks
    when training images vary in size after cropping (crop, then resize) or at test time on
    other sizes; global pooling works on every size.

    Besides the parent's ``forward``, the multi-task model uses ``layers(features)`` (logits
    ``[B, C, H/common_stride, W/common_stride]``) and ``losses(logits, targets)`` directly,
    so that one set of logits serves the 2D loss and the 2D-3D consistency loss.

    A batch whose pixels are all ``ignore_value`` gives ``loss_sem_seg`` = 0, still
    connected to the graph (zero gradients), where the parent's mean cross-entropy would be
    0 / 0 = NaN.
    """

    def losses(self, predictions, targets):
        """
        Args:
            predictions: ``[B, C, H/common_stride, W/common_stride]`` logits.
            targets: ``[B, H, W]`` long class ids or ``ignore_value``.

        Returns:
            ``{"loss_sem_seg": scalar}``, weighted by the head's ``loss_weight``.
        """
        if not bool((targets != self.ignore_value).any()):  # one device sync per step
            return {"loss_sem_seg": predictions.sum() * 0.0}
        return super().losses(predictions, targets)

    @classmethod
    def from_config(cls, cfg, input_shape):
        # the parent reads INPUT.CROP only to size the pooling window (and insists on
        # "absolute" crops); global pooling needs neither
        cfg = cfg.clone()
        cfg.defrost()
        cfg.INPUT.CROP.ENABLED = False
        return super().from_config(cfg, input_shape)
