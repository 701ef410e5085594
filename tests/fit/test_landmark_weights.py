"""Per-landmark weights: MediaPipe's lower-face points count less, and that keeps a biased lip off the mesh."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mmface4d_stream.face.template_model import TemplateModel
from mmface4d_stream.fit.fit_io import FrameObservation
from mmface4d_stream.fit.fitter import FaceFitter, FitterConfig
from mmface4d_stream.fit.landmark_weights import face_oval_points, landmark_weights
from mmface4d_stream.fit.synthetic import make_rig, synthetic_face_model, synthetic_frame

pytestmark = pytest.mark.usefixtures("single_torch_thread")

UPPER_LIP = [0, 37, 39, 40, 185, 267, 269, 270, 409, 13, 82, 81, 80, 191, 312, 311, 310, 415]


@pytest.fixture(scope="module")
def subject(astronaut_face_points):
    return TemplateModel.from_points(astronaut_face_points, subdivisions=1)


def test_lower_face_points_get_the_weight_and_the_outline_keeps_one(subject):
    model = subject[0]
    w = landmark_weights(model, 0.3)
    assert w.shape == (model.n_landmarks,)
    lips = [13, 14, 0, 17, 61, 291, 80, 310, 87, 317]
    np.testing.assert_array_equal(w[lips], 0.3)  # both lips and the corners
    np.testing.assert_array_equal(w[[33, 263, 1, 4, 10, 159, 386]], 1.0)  # eyes, nose, forehead
    np.testing.assert_array_equal(w[face_oval_points()], 1.0)  # the chin's outline (152) too
    assert 0.1 < (w < 1).mean() < 0.4
    np.testing.assert_array_equal(landmark_weights(model, 1.0), 1.0)
    # A model whose landmarks do not include the mouth corners is left alone.
    other = synthetic_face_model(n_vertices=500, n_id=2, n_exp=2)
    np.testing.assert_array_equal(landmark_weights(other, 0.3), 1.0)


def test_the_weight_hands_a_biased_upper_lip_from_the_landmarks_to_depth(subject):
    """Upper-lip landmarks 4 px too low in every camera (MediaPipe with the mouth open), exact depth:
    the less the lower face's landmarks weigh, the nearer the lip's vertices stay to the truth."""
    model, r0, t0 = subject
    obs, gt = synthetic_frame(model, make_rig(3), r0, t0, None, None)
    shift = np.zeros((len(obs.cameras[0].landmarks_px), 2))  # detector points, image pixels
    shift[UPPER_LIP, 1] = 4.0
    biased = FrameObservation([dataclasses.replace(c, landmarks_px=c.landmarks_px + shift) for c in obs.cameras])
    lip = np.asarray(model.landmark_vertex)[np.isin(model.landmark_detector_index, UPPER_LIP)]
    errors = []
    for weight in (1.0, FitterConfig().landmark_lower_face_weight, 0.0):
        fitter = FaceFitter(model, FitterConfig(landmark_lower_face_weight=weight))
        res = fitter.fit(biased)
        res = fitter.fit(biased, warm_start=res)
        errors.append(1e3 * np.linalg.norm(res.vertices[lip] - gt[lip], axis=1).mean())
    assert errors[0] > 1.0  # the full-weight landmarks drag the lip (4 px ~ 3 mm at 0.65 m)
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.4  # depth alone puts it back
