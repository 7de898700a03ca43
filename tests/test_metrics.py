"""Flow metrics against values worked out by hand on tiny fields."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flow_engine.metrics import angular_error, epe, fl_all, flow_metrics


def field(vectors: list[tuple[float, float]]) -> torch.Tensor:
    """A 1-row flow [2,1,N] from a list of (u, v)."""
    return torch.tensor(vectors, dtype=torch.float32).T.reshape(2, 1, len(vectors))


# pixel:        A: error 5 on zero gt (outlier: > 3 px and > 5 % of 0)
#               B: error 4 on |gt| 100 (> 3 px but < 5 px = 5 %: not an outlier)
#               C: error 2 on |gt| 10 (> 5 % but < 3 px: not an outlier)
#               D: exact
#               E: huge error but not valid
GT = field([(0, 0), (100, 0), (10, 0), (7, -7), (0, 0)])
PRED = field([(3, 4), (104, 0), (12, 0), (7, -7), (100, 100)])
VALID = torch.tensor([[True, True, True, True, False]])


def test_epe_by_hand():
    assert epe(PRED, GT, VALID) == pytest.approx((5 + 4 + 2 + 0) / 4)
    assert epe(PRED, GT) == pytest.approx((5 + 4 + 2 + 0 + 100 * math.sqrt(2)) / 5)


def test_fl_by_hand_both_conditions():
    assert fl_all(PRED, GT, VALID) == pytest.approx(25.0)  # only A of the four valid pixels
    assert fl_all(PRED, GT) == pytest.approx(40.0)  # A and E of five
    # C with a 4 px error (> 3 px and > 5 % of 10): now an outlier too
    assert fl_all(field([(14, 0)]), field([(10, 0)])) == 100.0
    # B with a 6 px error (> 5 % of 100): outlier
    assert fl_all(field([(106, 0)]), field([(100, 0)])) == 100.0


def test_angular_error_by_hand():
    # (1,0,1) vs (0,0,1): 45 degrees; (-1,0,1) vs (1,0,1): orthogonal, 90 degrees
    assert angular_error(field([(1, 0), (-1, 0)]), field([(0, 0), (1, 0)])) == pytest.approx(67.5)
    assert angular_error(GT, GT) == pytest.approx(0.0, abs=1e-5)
    a = math.degrees(math.acos(1 / math.sqrt(26)))  # A: (3,4,1) vs (0,0,1)
    b = math.degrees(math.acos((104 * 100 + 1) / math.sqrt(104**2 + 1) / math.sqrt(100**2 + 1)))
    c = math.degrees(math.acos((12 * 10 + 1) / math.sqrt(145) / math.sqrt(101)))
    assert angular_error(PRED, GT, VALID) == pytest.approx((a + b + c + 0) / 4)


def test_flow_metrics_dict_and_numpy_layout():
    m = flow_metrics(PRED, GT, VALID)
    assert set(m) == {"epe", "ae", "fl"}
    assert m["epe"] == pytest.approx(2.75) and m["fl"] == pytest.approx(25.0)
    # numpy inputs in the file layout [H, W, 2] give the same numbers
    as_np = lambda t: t.permute(1, 2, 0).numpy()  # noqa: E731
    m_np = flow_metrics(as_np(PRED), as_np(GT), VALID.numpy())
    assert m_np == pytest.approx(m)


def test_batch_is_one_set_of_pixels():
    # frame 0: one valid pixel with error 10; frame 1: three valid pixels with error 0
    pred = torch.zeros(2, 2, 2, 2)
    gt = torch.zeros(2, 2, 2, 2)
    pred[0, 0, 0, 0] = 10
    valid = torch.tensor([[[True, False], [False, False]], [[True, True], [True, False]]])
    assert epe(pred, gt, valid) == pytest.approx(10 / 4)  # not (10 + 0) / 2
    assert fl_all(pred, gt, valid) == pytest.approx(25.0)
    # a mask of [H,W] broadcasts over the batch
    assert epe(pred, gt, torch.tensor([[True, False], [False, False]])) == pytest.approx(5.0)


def test_empty_mask_and_bad_shapes_raise():
    with pytest.raises(ValueError, match="no pixels"):
        epe(PRED, GT, torch.zeros_like(VALID))
    with pytest.raises(ValueError, match="pred and gt"):
        epe(PRED, GT[:, :, :3])
    with pytest.raises(ValueError, match="valid mask"):
        epe(PRED, GT, torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\[..., H, W, 2\]"):
        epe(np.zeros((4, 4, 3)), np.zeros((4, 4, 3)))


@pytest.mark.gpu
def test_metrics_on_gpu():
    m = flow_metrics(PRED.cuda(), GT.cuda(), VALID.cuda())
    assert m == pytest.approx(flow_metrics(PRED, GT, VALID))
