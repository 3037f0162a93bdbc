"""Following faces through a video by their landmarks (labfast.inference.track), on a clip made from a bundled photo."""
import json
import time
from pathlib import Path

import numpy as np
import pytest

from labfast import metrics

from labfast.inference import track
from labfast.inference.aligner import FaceAligner
from labfast.data import read_image_bgr, read_pts

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "300w_sample"


@pytest.fixture(scope="module")
def clip():
    photo = SAMPLE / "fullres" / "image_0067.png"
    return track.moving_crop_clip(read_image_bgr(str(photo)), read_pts(photo.with_suffix(".pts")) - 1, frames=40)


def clip_nmes(tracker, frames, truth):
    nmes, seconds = [], 0.0
    for frame, landmarks in zip(frames, truth):
        start = time.perf_counter()
        faces = tracker.update(frame)
        seconds += time.perf_counter() - start
        assert len(faces) == 1
        nmes.append(metrics.nme(faces[0].landmarks[None], landmarks[None], "300w")[0])
    return np.asarray(nmes), seconds


def test_clip_ground_truth_moves_with_the_crop(clip):
    frames, truth = clip
    assert len(frames) == len(truth) == 40 and frames[0].shape == (320, 320, 3)
    centres = (truth.min(axis=1) + truth.max(axis=1)) / 2
    sizes = (truth.max(axis=1) - truth.min(axis=1)).max(axis=1)
    assert np.ptp(centres, axis=0).min() > 30 and sizes.max() / sizes.min() > 1.5  # it moves and zooms


def test_tracking_runs_the_detector_rarely_and_stays_near_per_frame_detection(clip):
    # Measured when written (shipped weights, 40 frames, the face moving about a tenth of its size a
    # frame, three times faster than benchmarks/tracking.py's clips): detection in every frame NME
    # 4.56 % (max 5.3); tracking with the detector every 10 frames 5.67 % (max 9.1) on 4 frames. At
    # this speed the detection-anchored box lags the zoom between detections: 1.5 points of slack on
    # the mean, and no tracked frame may fail (FR@10).
    frames, truth = clip
    aligner = FaceAligner(device="cpu")
    every_frame = track.FaceTracker(aligner, redetect_every=1)
    detected, _ = clip_nmes(every_frame, frames, truth)
    tracker = track.FaceTracker(aligner, redetect_every=10)
    tracked, _ = clip_nmes(tracker, frames, truth)
    assert every_frame.detections == 40 and tracker.detections <= 4
    assert tracked.mean() <= detected.mean() + 0.015 and tracked.max() < 0.10


def test_a_lost_face_is_re_detected_and_an_empty_scene_waits_for_the_periodic_detection(clip):
    frames, _ = clip
    aligner = FaceAligner(device="cpu")
    tracker = track.FaceTracker(aligner, redetect_every=3)
    tracker.update(frames[0])
    blank = np.full_like(frames[0], 128)
    assert tracker.update(blank) == [] and tracker.detections == 2  # confidence fell: detector ran, found nothing
    assert tracker.update(frames[1]) == [] and tracker.update(frames[2]) == [] and tracker.detections == 2
    assert len(tracker.update(frames[3])) == 1 and tracker.detections == 3  # the third frame since: detect


def test_a_face_keeps_its_id_and_its_detection_score_on_every_frame(clip):
    frames, _ = clip
    tracker = track.FaceTracker(FaceAligner(device="cpu"), redetect_every=10)
    faces = [tracker.update(frame)[0] for frame in frames[:21]]
    assert {face.track_id for face in faces} == {0} and tracker.detections == 3
    # tracked frames carry the score of the detection before them; detections refresh it
    for start in (0, 10, 20):
        assert faces[start].score is not None
        assert all(face.score == faces[start].score for face in faces[start:start + 10])


def test_a_face_leaving_the_frame_is_dropped_without_re_detecting(clip):
    frames, _ = clip
    tracker = track.FaceTracker(FaceAligner(device="cpu"), redetect_every=100)
    tracker.update(frames[0])
    tracker.anchors[0][:2] += 10.0  # its next box ten face sizes to the side: outside the frame
    assert tracker.update(frames[1]) == [] and tracker.detections == 1


def test_face_or_not_threshold_record_says_what_it_was_fitted_on_and_its_rates():
    from labfast.inference.aligner import FACE_CONFIDENCE_FILE

    record = json.loads(FACE_CONFIDENCE_FILE.read_text())
    # fitted on faces training held out, never on the in-the-wild faces that judge it
    assert "held-out 300-W validation faces" in record["fitted_on"] and "wild" not in record["fitted_on"]
    assert record["faces"] == 101 and record["checkpoint"] == "lab_300w.pt"
    assert 0 < record["min_confidence"] < 1 and record["false_drop"] <= 0.02 and record["non_faces_dropped"] > 0.5


def test_face_or_not_threshold_drops_four_fifths_of_non_faces_unless_that_drops_over_2_percent_of_faces():
    from labfast.tools.face_confidence_fit import fit

    non_faces = np.arange(100) / 100  # 0.00 ... 0.99: 80 % lie under 0.792
    assert fit(np.full(50, 0.9), non_faces) == {"min_confidence": 0.792, "false_drop": 0.0, "non_faces_dropped": 0.8}
    faces = np.linspace(0.5, 0.99, 50)  # 1 of 50 faces may drop: the threshold is the second face's, 0.51
    record = fit(faces, non_faces)
    assert record["min_confidence"] == 0.51 and record["false_drop"] == 0.02 and record["non_faces_dropped"] == 0.51


def test_redetect_every_must_be_positive():
    with pytest.raises(ValueError, match="redetect_every must be at least 1"):
        track.FaceTracker(aligner=None, redetect_every=0)


def test_a_fast_face_keeps_its_id_across_re_detections(clip):
    # the clip's face moves a tenth of its size a frame and zooms 1.6x, so a re-detected box can lie
    # far from the last tracked one (on a 20-frame version of the drift clip an IoU >= 0.3 rule gave
    # the one face a second id); re-detected every 5 frames, it must keep id 0 throughout
    tracker = track.FaceTracker(FaceAligner(device="cpu"), redetect_every=5)
    frames, _ = clip
    assert {face.track_id for frame in frames for face in tracker.update(frame)} == {0} and tracker.detections >= 8
