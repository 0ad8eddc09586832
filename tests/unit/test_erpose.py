"""ER-Pose: network size and outputs, Smooth-OKS, assignment, TAE, codec and letterbox."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.codecs.erpose import anchor_grid, decode, decode_offsets, encode_offsets
from models.export import build
from models.losses.erpose import ERPoseLoss, smooth_oks
from models.nets.erpose import ERPose, erpose_n
from models.pipelines.erpose import PAD_VALUE
from models.profile import count_params
from models.train.assign import COCO_SIGMAS, assign, oks_matrix, task_alignment_error
from models.transforms import letterbox

pytestmark = [pytest.mark.unit, pytest.mark.train]

K = 17
C = 1 + 3 * K

# Paper Table I (M). We count the deploy model: backbone + neck + one-to-one head (the one-to-many
# head exists only in training), as YOLOv10 reports and as the ONNX file holds.
PAPER_PARAMS_M = {"erpose-n": 2.53, "erpose-s": 9.69, "erpose-m": 23.36, "erpose-l": 39.95}


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(2)


@pytest.mark.parametrize("name", list(PAPER_PARAMS_M))
def test_deploy_params_match_paper(name: str) -> None:
    model = build(name)
    assert isinstance(model, ERPose)
    deploy = count_params(model) - count_params(model.one_to_many)
    assert abs(deploy / 1e6 - PAPER_PARAMS_M[name]) <= 0.10 * PAPER_PARAMS_M[name]


def test_forward_train_returns_both_heads_eval_only_one_to_one() -> None:
    size = 128
    model = erpose_n(size)
    points, _ = anchor_grid(size, model.strides)
    x = torch.rand(2, 3, size, size)
    model.train()
    o2m, o2o = model(x)
    assert o2m.shape == o2o.shape == (2, len(points), C)
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, len(points), C)
    assert model.strides == (16, 32) and build("erpose-s").strides == (8, 16, 32)


def test_smooth_oks_is_c1_at_one() -> None:
    eps = 1e-6
    u = torch.tensor([1.0 - eps, 1.0, 1.0 + eps], dtype=torch.float64, requires_grad=True)
    y = smooth_oks(u)
    (grad,) = torch.autograd.grad(y.sum(), u)
    assert torch.allclose(y, torch.full_like(y, np.exp(-0.5)), atol=1e-5)
    assert torch.allclose(grad, torch.full_like(grad, -np.exp(-0.5)), atol=1e-5)
    # the pieces: Gaussian below 1, Laplace tail above
    u2 = torch.tensor([0.0, 0.5, 2.0, 4.0], dtype=torch.float64)
    expected = torch.tensor([1.0, np.exp(-0.125), np.exp(-1.5), np.exp(-3.5)], dtype=torch.float64)
    assert torch.allclose(smooth_oks(u2), expected)


def _person(cx: float, cy: float, spread: float = 20.0) -> torch.Tensor:
    rng = np.random.default_rng(0)
    xy = np.stack((cx + rng.uniform(-spread, spread, K), cy + rng.uniform(-spread, spread, K)), axis=1)
    return torch.from_numpy(np.concatenate((xy, np.full((K, 1), 2.0)), axis=1)).float()


def test_assigner_picks_highest_conf_alpha_oks_beta() -> None:
    gt = _person(50.0, 50.0)[None]  # (1, K, 3)
    box = torch.tensor([[20.0, 20.0, 80.0, 80.0]])
    anchor_xy = torch.tensor([[40.0, 40.0], [50.0, 50.0], [60.0, 60.0], [200.0, 200.0]])
    # 0: very confident, pose 6 px off; 1: moderate confidence, pose 1 px off (the best score);
    # 2: perfect pose, hardly any confidence; 3: perfect and confident but outside the box.
    pred = gt[0, :, :2].repeat(4, 1, 1).clone()
    pred[0] += 6.0
    pred[1] += 1.0
    logits = torch.tensor([4.0, 0.0, -30.0, 4.0])
    oks = oks_matrix(pred, gt, torch.tensor([3600.0]), torch.from_numpy(COCO_SIGMAS))[0]
    score = torch.sigmoid(logits).pow(0.5) * oks.pow(6.0)
    assert score[:3].argsort(descending=True).tolist() == [1, 0, 2]  # the case is what the test claims

    idx = assign(logits, pred, anchor_xy, gt, box, topk=1)
    assert idx.tolist() == [-1, 0, -1, -1]
    idx = assign(logits, pred, anchor_xy, gt, box, topk=2)
    assert idx.tolist() == [0, 0, -1, -1]  # next best: confident anchor 0, not the unsure perfect one
    idx = assign(logits, pred, anchor_xy, gt, box, topk=1, center_in_box=False)
    assert idx.tolist() == [-1, -1, -1, 0]  # Algorithm 1 over all cells


def test_assigner_gives_shared_cell_to_best_person_and_handles_empty() -> None:
    a, b = _person(50.0, 50.0), _person(52.0, 50.0)
    gts = torch.stack((a, b))
    boxes = torch.tensor([[20.0, 20.0, 80.0, 80.0], [22.0, 20.0, 82.0, 80.0]])
    pred = b[:, :2][None]  # one anchor, predicting person b exactly
    idx = assign(torch.zeros(1), pred, torch.tensor([[50.0, 50.0]]), gts, boxes, topk=1)
    assert idx.tolist() == [1]
    none = assign(torch.zeros(1), pred, torch.tensor([[50.0, 50.0]]), gts[:0], boxes[:0], topk=1)
    assert none.tolist() == [-1]


def test_task_alignment_error() -> None:
    g0, g1 = _person(50.0, 50.0).numpy(), _person(150.0, 50.0).numpy()
    gts = np.stack((g0, g1))
    areas = np.array([3600.0, 3600.0])
    preds = np.stack((g0[:, :2] + 1.0, g1[:, :2] + 8.0, g1[:, :2]))  # p2 is g1's best
    assert task_alignment_error(gts, areas, preds, np.array([0, 2])) == pytest.approx(0.0, abs=1e-12)
    sim = oks_matrix(*(torch.as_tensor(v, dtype=torch.float64) for v in (preds, gts, areas, COCO_SIGMAS)))
    expected = float(sim[1, 2] - sim[1, 1])
    assert task_alignment_error(gts, areas, preds, np.array([0, 1])) == pytest.approx(expected)
    assert task_alignment_error(gts, areas, preds, np.array([0, -1])) == pytest.approx(float(sim[1, 2]))


def test_anchor_grid_order_and_offsets_round_trip() -> None:
    points, strides = anchor_grid(64, (16, 32))
    assert points.shape == (16 + 4, 2) and strides.shape == (20,)
    assert points[:2].tolist() == [[0.5, 0.5], [1.5, 0.5]] and points[4].tolist() == [0.5, 1.5]
    assert strides[15] == 16 and strides[16] == 32 and points[-1].tolist() == [1.5, 1.5]
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 64, (20, K, 2)).astype(np.float32)
    np.testing.assert_allclose(decode_offsets(encode_offsets(xy, points, strides), points, strides), xy, atol=1e-4)


def test_decode_hand_made_persons_without_duplicates() -> None:
    size, levels = 64, (16, 32)
    points, strides = anchor_grid(size, levels)
    raw = np.full((len(points), C), -8.0, dtype=np.float32)
    raw[:, 1 : 1 + 2 * K] = 0.0
    people = {5: (np.linspace(10, 30, K), 3.0), 18: (np.linspace(35, 60, K), 1.0)}  # anchor: (x, conf)
    for anchor, (xs, logit) in people.items():
        xy = np.stack((xs, xs[::-1]), axis=1)[None].astype(np.float32)
        raw[anchor, 0] = logit
        raw[anchor, 1 : 1 + 2 * K] = encode_offsets(xy, points[[anchor]], strides[[anchor]]).reshape(-1)
        raw[anchor, 1 + 2 * K :] = 4.0
    raw[18, -1] = -4.0  # person 2's last keypoint is not visible: excluded from its box
    raw[7, 0] = -2.0  # below threshold

    kpts, boxes, scores = decode(raw, input_size=size, strides=levels, conf_threshold=0.25)
    assert kpts.shape == (2, K, 3) and boxes.shape == (2, 4) and scores.shape == (2,)
    np.testing.assert_allclose(scores, 1 / (1 + np.exp(-np.array([3.0, 1.0]))), rtol=1e-5)
    np.testing.assert_allclose(kpts[0, :, 0], np.linspace(10, 30, K), atol=1e-4)
    np.testing.assert_allclose(kpts[1, :, 1], np.linspace(60, 35, K), atol=1e-4)
    np.testing.assert_allclose(boxes[0], [10, 10, 30, 30], atol=1e-4)
    xs2 = np.linspace(35, 60, K)
    np.testing.assert_allclose(boxes[1], [35, xs2[::-1][-2], xs2[-2], 60], atol=1e-4)
    assert kpts[1, -1, 2] < 0.05 < 0.95 < kpts[1, 0, 2]
    empty = decode(raw, input_size=size, strides=levels, conf_threshold=0.999)
    assert [a.shape for a in empty] == [(0, K, 3), (0, 4), (0,)]


def test_loss_is_zero_pose_for_perfect_one_to_one_prediction() -> None:
    size, levels = 64, (16, 32)
    points, strides = anchor_grid(size, levels)
    gt = _person(24.0, 24.0, spread=6.0)
    box = torch.tensor([[12.0, 12.0, 36.0, 36.0]])
    raw = torch.zeros(1, len(points), C)
    raw[..., 0] = -6.0
    anchor = 5  # cell (1, 1) of the stride-16 level, centre (24, 24): inside the box
    raw[0, anchor, 0] = 6.0
    raw[0, anchor, 1 : 1 + 2 * K] = torch.from_numpy(
        encode_offsets(gt[None, :, :2].numpy(), points[[anchor]], strides[[anchor]]).reshape(-1)
    )
    raw[0, anchor, 1 + 2 * K :] = 8.0
    loss, parts = ERPoseLoss(size, levels)((raw, raw), [gt[None]], [box])
    assert parts["one_to_one/pose"].item() == pytest.approx(0.0, abs=1e-5)
    assert parts["one_to_one/vis"].item() < 1e-3 and parts["one_to_one/conf"].item() < 0.1
    assert parts["one_to_many/pose"].item() > 0.0 and torch.isfinite(loss)


def test_letterbox_maps_points_both_ways() -> None:
    image = np.zeros((100, 200, 3), np.uint8)
    canvas, lb = letterbox(image, 64, center=True, pad_value=PAD_VALUE)
    assert canvas.shape == (64, 64, 3) and lb.scale_x == pytest.approx(0.32) and lb.pad_y == 16.0
    assert canvas[0, 0, 0] == 114 and canvas[32, 32, 0] == 0
    xy = np.array([[0.0, 0.0], [199.0, 99.0]], np.float32)
    np.testing.assert_allclose(lb.to_input(xy), [[-0.34, 15.66], [63.34, 47.34]], atol=1e-4)
    np.testing.assert_allclose(lb.to_image(lb.to_input(xy)), xy, atol=1e-3)
