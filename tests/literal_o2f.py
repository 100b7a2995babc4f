"""A literal, unoptimised reading of SPEC §2 (dense N x G matrices, a Python loop per gt).

It is the oracle the vectorised assigner is tested against and the baseline it is benchmarked
against, so it follows the text step by step and nothing else.
"""

from __future__ import annotations

import torch
from torch import Tensor


def dense_iou(pred: Tensor, gt: Tensor) -> Tensor:
    """(N, 4) x (G, 4) -> (N, G) IoU with the union clamped to at least 1e-6."""
    area_p = (pred[:, 2] - pred[:, 0]).clamp(min=0) * (pred[:, 3] - pred[:, 1]).clamp(min=0)
    area_g = (gt[:, 2] - gt[:, 0]).clamp(min=0) * (gt[:, 3] - gt[:, 1]).clamp(min=0)
    lt = torch.maximum(pred[:, None, :2], gt[None, :, :2])
    rb = torch.minimum(pred[:, None, 2:], gt[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_p[:, None] + area_g[None, :] - inter).clamp(min=1e-6)


@torch.no_grad()
def literal_o2f_assign(points, strides, cls_logits, ctr_logits, pred_boxes, gt_boxes, gt_labels,
                       *, topk=7, alpha=0.8, center_radius=1.5, soft_t=0.6, soft_weight=0.4):
    num_points, num_classes = cls_logits.shape
    num_gt = gt_boxes.shape[0]
    labels = torch.full((num_points,), num_classes, dtype=torch.long)
    box_targets = torch.zeros((num_points, 4))
    soft_labels = torch.zeros(num_points)
    soft_weights = torch.zeros(num_points)
    if num_gt == 0:
        return labels, box_targets, soft_labels, soft_weights

    # 1-3
    prob = torch.sigmoid(cls_logits[:, gt_labels]) * torch.sigmoid(ctr_logits)[:, None]
    iou = dense_iou(pred_boxes, gt_boxes)
    quality = prob.pow(1 - alpha) * iou.pow(alpha)
    # 4
    cx = (gt_boxes[:, 0] + gt_boxes[:, 2]) / 2
    cy = (gt_boxes[:, 1] + gt_boxes[:, 3]) / 2
    r = strides[:, None] * center_radius
    x1 = torch.maximum(cx[None] - r, gt_boxes[None, :, 0])
    y1 = torch.maximum(cy[None] - r, gt_boxes[None, :, 1])
    x2 = torch.minimum(cx[None] + r, gt_boxes[None, :, 2])
    y2 = torch.minimum(cy[None] + r, gt_boxes[None, :, 3])
    px, py = points[:, 0:1], points[:, 1:2]
    inside = (px - x1 > 0) & (py - y1 > 0) & (x2 - px > 0) & (y2 - py > 0)
    quality = torch.where(inside, quality, torch.zeros_like(quality))
    iou = torch.where(inside, iou, torch.zeros_like(iou))
    # 5
    candidates = inside.any(dim=1).nonzero().squeeze(1)
    matching = torch.zeros_like(quality)
    for g in range(num_gt):
        k = min(topk, int((iou[:, g] > 0).sum()))
        if k == 0:
            continue
        q = quality[candidates, g]
        order = torch.argsort(-q, stable=True)[:k]  # ties: lower point index first
        matching[candidates[order], g] = q[order]
    # 6
    best = matching.max(dim=1).values
    owner = (matching == best[:, None]).int().argmax(dim=1)  # first maximum: lowest gt index
    assigned = best > 0
    # 7
    for g in range(num_gt):
        members = (assigned & (owner == g)).nonzero().squeeze(1)
        if members.numel() == 0:
            continue
        members = members[torch.argsort(-quality[members, g], stable=True)]
        labels[members] = gt_labels[g]
        box_targets[members] = gt_boxes[g]
        soft_labels[members[0]] = 1.0
        soft_weights[members[0]] = 1.0
        soft = members[1:]
        if soft.numel():
            p = prob[soft, g]
            soft_labels[soft] = soft_t * p / p.max()
            soft_weights[soft] = soft_weight
    return labels, box_targets, soft_labels, soft_weights
