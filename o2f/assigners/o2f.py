"""One-to-few label assignment (SPEC §2), computed on candidate windows, a whole batch at once.

Only a point within ``center_radius`` strides of a gt centre can be a candidate for that gt, so
instead of dense (N, G) matrices the assigner gives every gt, per level, the small window of
grid cells around its centre (:func:`o2f.assigners.pairs.window_slots`: S slots per gt), keeps
the slots that pass the exact candidate test, and does every later step on those (B, G, S)
tensors: the top-k of each gt is a stable sort of its S slots, the conflicts between gts are
scatters into the points, the positive / soft-anchor split is a reduction over each gt's slots.
The cost is O(G) instead of O(N x G); the result is the same as the dense definition because
every pair outside the windows has quality 0 there.

The images of a batch share one call: their gts are padded to the batch's largest G with a
``gt_valid`` mask. Nothing has a data-dependent size, so on a GPU the assignment never waits
for the device (no ``nonzero``, boolean-mask indexing or ``.item()``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from o2f.assigners.pairs import LevelGrid, candidate_slots, owner_of_points
from o2f.boxes import pair_iou


def soft_label_ceiling(epoch: int, max_epoch: int, start: float = 0.6, end: float = 0.2) -> float:
    """Soft-label ceiling t of the 0-based ``epoch``: ``start`` at the first epoch, ``end`` at the
    last, linear in between (SPEC §2)."""
    if max_epoch <= 1:
        return start
    return start + (end - start) * epoch / (max_epoch - 1)


@torch.no_grad()
def o2f_assign(
    points: Tensor, strides: Tensor, cls_logits: Tensor, ctr_logits: Tensor,
    pred_boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor, *, topk: int = 7,
    alpha: float = 0.8, center_radius: float = 1.5, soft_t: float = 0.6,
    soft_weight: float = 0.4, grids: list[LevelGrid] | None = None,
    gt_centers: Tensor | None = None, return_gt_index: bool = False,
) -> tuple[Tensor, ...]:
    """One-to-few assignment of one image (SPEC §2): :func:`o2f_assign_batch` of a batch of one.

    Args:
        points: (N, 2) x, y of every point; levels in order, each row-major.
        strides: (N,) stride of each point's level.
        cls_logits: (N, C) raw class logits.
        ctr_logits: (N,) raw centerness logits.
        pred_boxes: (N, 4) decoded predicted boxes x1, y1, x2, y2.
        gt_boxes: (G, 4) x1, y1, x2, y2 (G may be 0).
        gt_labels: (G,) int64 in [0, C).
        grids: the level layout of ``points`` when the caller already knows it
            (see :func:`level_grids`); derived from points and strides otherwise.
        gt_centers: (G, 2) x, y centres of the candidate regions (step 4) instead of the box
            centres (CondInst centres them on each instance mask's centre of mass).
        return_gt_index: also return the matched gt of each point.

    Returns:
        labels (N,) int64, class of the assigned gt, C for background;
        box_targets (N, 4), the assigned gt box (zeros for background);
        soft_labels (N,), 1 for each gt's positive, in (0, soft_t] for soft anchors, else 0;
        soft_weights (N,), 1 for positives, soft_weight for soft anchors, else 0;
        with ``return_gt_index``, gt_index (N,) int64, the assigned gt's row, -1 for background.
    """
    valid = torch.ones(gt_boxes.shape[:1], dtype=torch.bool, device=gt_boxes.device)
    out = o2f_assign_batch(
        points, strides, cls_logits[None], ctr_logits[None], pred_boxes[None], gt_boxes[None],
        gt_labels[None], valid[None], topk=topk, alpha=alpha, center_radius=center_radius,
        soft_t=soft_t, soft_weight=soft_weight, grids=grids,
        gt_centers=None if gt_centers is None else gt_centers[None],
        return_gt_index=return_gt_index,
    )
    return tuple(t[0] for t in out)


@torch.no_grad()
def o2f_assign_batch(
    points: Tensor, strides: Tensor, cls_logits: Tensor, ctr_logits: Tensor,
    pred_boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor, gt_valid: Tensor, *,
    topk: int = 7, alpha: float = 0.8, center_radius: float = 1.5, soft_t: float = 0.6,
    soft_weight: float = 0.4, grids: list[LevelGrid] | None = None,
    gt_centers: Tensor | None = None, return_gt_index: bool = False,
) -> tuple[Tensor, ...]:
    """One-to-few assignment of a batch of B images (SPEC §2), each image on its own gts.

    Args:
        points: (N, 2) x, y of every point (shared by the images); levels in order, each
            row-major.
        strides: (N,) stride of each point's level.
        cls_logits: (B, N, C) raw class logits.
        ctr_logits: (B, N) raw centerness logits.
        pred_boxes: (B, N, 4) decoded predicted boxes x1, y1, x2, y2.
        gt_boxes: (B, G, 4) x1, y1, x2, y2, each image's gts padded to the batch's largest G
            (G may be 0).
        gt_labels: (B, G) int64 in [0, C) (any value in the padding).
        gt_valid: (B, G) bool, False for the padding.
        grids, gt_centers ((B, G, 2)), return_gt_index: as in :func:`o2f_assign`.

    Returns:
        labels (B, N), box_targets (B, N, 4), soft_labels (B, N), soft_weights (B, N) and with
        ``return_gt_index`` gt_index (B, N) (the row in the image's gts, -1 for background), as
        :func:`o2f_assign` gives them for each image.
    """
    batch, num_points, num_classes = cls_logits.shape
    num_gt = gt_boxes.shape[1]
    device = cls_logits.device
    labels = torch.full((batch, num_points), num_classes, dtype=torch.long, device=device)
    box_targets = torch.zeros((batch, num_points, 4), dtype=pred_boxes.dtype, device=device)
    soft_labels = torch.zeros((batch, num_points), dtype=cls_logits.dtype, device=device)
    soft_weights = torch.zeros_like(soft_labels)
    gt_index = torch.full((batch, num_points), -1, dtype=torch.long, device=device)
    if num_gt == 0 or num_points == 0:
        return (labels, box_targets, soft_labels, soft_weights) + (
            (gt_index,) if return_gt_index else ())

    if gt_centers is None:
        gt_centers = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2
    slot_pts, in_grid = candidate_slots(points, strides, grids, gt_centers, center_radius)
    num_slots = slot_pts.shape[-1]

    # Step 4: exact candidate test of each slot (centre square intersected with the gt box).
    px, py = points[slot_pts, 0], points[slot_pts, 1]  # (B, G, S)
    radius = strides[slot_pts] * center_radius
    gt = gt_boxes[:, :, None, :]  # (B, G, 1, 4)
    cx, cy = gt_centers[..., 0, None], gt_centers[..., 1, None]
    candidate = (
        in_grid & gt_valid[..., None]
        & (px - torch.maximum(cx - radius, gt[..., 0]) > 0)
        & (py - torch.maximum(cy - radius, gt[..., 1]) > 0)
        & (torch.minimum(cx + radius, gt[..., 2]) - px > 0)
        & (torch.minimum(cy + radius, gt[..., 3]) - py > 0)
    )

    # Steps 1-3 on every slot (only the candidates count from here on).
    image = torch.arange(batch, device=device)[:, None, None]
    prob = torch.sigmoid(cls_logits[image, slot_pts, gt_labels[..., None]]) * torch.sigmoid(
        ctr_logits[image, slot_pts]
    )
    iou = pair_iou(pred_boxes[image, slot_pts], gt)
    quality = prob.pow(1 - alpha) * iou.pow(alpha)
    # A pick with quality 0 never wins a point (step 6 needs > 0), so only positive slots matter.
    keep = candidate & (quality > 0)

    # Step 5: the top-k slots of each gt by quality; the stable sort puts ties in slot order,
    # which is point order (lower point index first).
    key = torch.where(keep, quality, torch.full_like(quality, -1.0))
    order = key.argsort(dim=-1, descending=True, stable=True)[..., : min(topk, num_slots)]
    picked = keep & torch.zeros_like(keep).scatter_(-1, order, True)

    # Step 6: a point picked by several gts goes to the largest quality (ties: lowest gt index).
    owner = owner_of_points(slot_pts, picked, quality, num_points, "max")  # (B, N), G: none
    winner = picked & (owner.gather(1, slot_pts.flatten(1)).view_as(slot_pts)
                       == torch.arange(num_gt, device=device)[:, None])

    # Step 7: per gt, the best assigned point is the positive (ties: the lower point index, the
    # first such slot), the others are soft anchors.
    top = torch.where(winner, quality, torch.full_like(quality, -1.0)).amax(-1, keepdim=True)
    first = (winner & (quality == top)).to(torch.uint8).argmax(-1, keepdim=True)
    is_positive = winner & (torch.arange(num_slots, device=device) == first)
    anchor = winner & ~is_positive
    soft_max = torch.where(anchor, prob, torch.zeros_like(prob)).amax(-1, keepdim=True)
    soft = soft_t * prob / soft_max.clamp(min=torch.finfo(prob.dtype).tiny)
    one = torch.ones_like(soft)
    slot_labels = torch.where(is_positive, one, soft)
    slot_weights = torch.where(is_positive, one, torch.full_like(soft, soft_weight))

    assigned = owner < num_gt
    row = owner.clamp(max=num_gt - 1)
    labels = torch.where(assigned, gt_labels.gather(1, row).long(), labels)
    box_targets = torch.where(
        assigned[..., None], gt_boxes.gather(1, row[..., None].expand(-1, -1, 4)).to(
            box_targets.dtype), box_targets)
    # each point has at most one winning slot: the max over its slots (all others 0) is it
    flat = (slot_pts + image * num_points).flatten()
    zero = torch.zeros_like(slot_labels)
    soft_labels = soft_labels.flatten().scatter_reduce(
        0, flat, torch.where(winner, slot_labels, zero).flatten(), reduce="amax").view_as(labels)
    soft_weights = soft_weights.flatten().scatter_reduce(
        0, flat, torch.where(winner, slot_weights, zero).flatten(), reduce="amax",
    ).view_as(labels)
    outputs = (labels, box_targets, soft_labels.to(cls_logits.dtype),
               soft_weights.to(cls_logits.dtype))
    if return_gt_index:
        outputs += (torch.where(assigned, owner, gt_index),)
    return outputs
