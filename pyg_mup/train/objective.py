"""Loss and Evaluator inputs for each OGB task type.

Losses are returned as ``(sum over labelled entries, number of labelled entries)`` so that the
training loop can divide by the count of the whole *global* batch: a data-parallel run then
takes exactly the gradient a single process would take on the same batch, even when ranks hold
different numbers of labelled entries (missing labels are NaN, as in ``ogbg-molpcba``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pyg_mup.data import Task


class Objective:
    """The training objective of an OGB task, and the predictions its ``Evaluator`` expects.

    - binary classification (one or many tasks): BCE on logits; NaN labels are masked out.
    - regression: MSE on targets standardised with the train split's mean and std (so one
      learning rate suits every dataset); predictions are mapped back before evaluation.
    - multi-class classification: cross-entropy; the Evaluator gets the argmax class.

    Args:
        task: the dataset's :class:`~pyg_mup.data.Task`.
        y_train: ``[n, num_tasks]`` train labels (regression statistics come from them).
    """

    def __init__(self, task: Task, y_train: Tensor) -> None:
        self.task = task
        if task.is_regression:
            y = y_train.float()
            labelled = ~torch.isnan(y)
            count = labelled.sum(0).clamp(min=1)
            mean = torch.where(labelled, y, 0.0).sum(0) / count
            var = torch.where(labelled, (y - mean) ** 2, 0.0).sum(0) / count
            self.mean, self.std = mean, var.sqrt().clamp(min=1e-6)
        else:
            self.mean = self.std = None

    def loss_terms(self, pred: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """``(loss summed over labelled entries, number of labelled entries)``.

        Shapes: ``pred`` ``[n, out_channels]``; ``y`` ``[n, num_tasks]`` (``[n, 1]`` or ``[n]``
        class ids for multi-class). Returns a scalar float tensor and a scalar count tensor.
        """
        if self.task.is_multiclass:
            target = y.view(-1).long()
            return F.cross_entropy(pred, target, reduction="sum"), pred.new_tensor(target.numel())
        y = y.view(pred.shape).to(pred.dtype)
        labelled = ~torch.isnan(y)
        # NaN must not reach the loss even where masked: its gradient would be NaN * 0 = NaN.
        y = y.nan_to_num(0.0)
        if self.task.is_regression:
            target = (y - self.mean.to(pred)) / self.std.to(pred)
            losses = (pred - target).pow(2)
        else:
            losses = F.binary_cross_entropy_with_logits(pred, y, reduction="none")
        loss = torch.where(labelled, losses, 0.0).sum()
        return loss, labelled.sum().to(pred.dtype)

    def predictions(self, pred: Tensor) -> Tensor:
        """What the Evaluator scores: ``[n, num_tasks]`` scores/values, or ``[n, 1]`` classes."""
        if self.task.is_multiclass:
            return pred.argmax(dim=-1, keepdim=True)
        if self.task.is_regression:
            return pred * self.std.to(pred) + self.mean.to(pred)
        return pred

    def targets(self, y: Tensor) -> Tensor:
        """Labels in the Evaluator's layout: ``[n, num_tasks]`` (NaN kept: it skips them)."""
        return y.view(y.size(0), -1)
