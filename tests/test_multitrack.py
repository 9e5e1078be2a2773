"""Every face of a clip tracked with stable ids, on real photos of several people, and choosing whom to edit."""

import functools

import numpy as np
import pytest

from media import AWAY, PAN_FRAMES, RETURN_FRAMES, RETURN_SIZE, decoded_frames, dlib_landmarker, media_path
from dva_model.errors import NoFaceError, UserError
from dva_model.face.landmarks import FaceLandmarker
from dva_model.face.multitrack import (
    MultiTrackConfig, parse_face_ids, select_by_ids, select_by_reference, track_people,
)
from dva_model.face.preview import draw_tracks, track_colour
from dva_model.face.recognition import SAME_PERSON_DISTANCE, DlibRecogniser, describe_largest_face


def _uint8(name: str, count: int) -> np.ndarray:
    return (decoded_frames(name, count).numpy() * 255).round().astype(np.uint8)


@functools.lru_cache(maxsize=1)
def recogniser() -> DlibRecogniser:
    return DlibRecogniser()


@functools.lru_cache(maxsize=4)
def people(name: str, count: int, with_recogniser: bool = True, order: str = "largest"):
    return track_people([_uint8(name, count)], dlib_landmarker(), recogniser=recogniser() if with_recogniser else None,
                        order=order, source=name)


def _photo(name: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(media_path(name)).convert("RGB"))


def _centres(track) -> np.ndarray:
    return (track.boxes[:, :2] + track.boxes[:, 2:]) / 2  # [N, 2]


def test_four_people_in_a_real_panning_clip_keep_their_track_ids():
    tracks = people("multi_face_pan.mp4", PAN_FRAMES)
    assert len(tracks) == 4  # the four faces in view (the fifth person's face is outside the window)
    frames = _uint8("multi_face_pan.mp4", PAN_FRAMES)
    for person in tracks:
        assert person.track.detected.all() and person.track.has_face.all()
        size = np.sqrt(np.prod(person.track.boxes[:, 2:] - person.track.boxes[:, :2], axis=1))
        steps = np.linalg.norm(np.diff(_centres(person.track), axis=0), axis=1)
        assert (steps < 0.25 * size[1:]).all()  # the box moves smoothly: no jump to another face
    # No swaps, by identity: in every frame, each track's face is nearest its own track's mean descriptor.
    means = np.stack([p.descriptor for p in tracks])
    for row in range(0, PAN_FRAMES, 3):
        for person in tracks:
            box, points = person.track.boxes[row], person.track.landmarks[row]
            descriptor = recogniser().describe(frames[row], box, points)
            assert int(np.argmin(np.linalg.norm(means - descriptor, axis=1))) == person.track_id


def test_tracks_are_numbered_largest_first_or_left_to_right():
    largest = people("multi_face_pan.mp4", PAN_FRAMES)
    sizes = [np.median(np.prod(p.track.boxes[:, 2:] - p.track.boxes[:, :2], axis=1)) for p in largest]
    assert sizes == sorted(sizes, reverse=True)
    left = people("multi_face_pan.mp4", PAN_FRAMES, order="left_to_right")
    xs = [np.median(_centres(p.track)[:, 0]) for p in left]
    assert xs == sorted(xs)
    assert sorted(map(tuple, (p.track.boxes[0] for p in left))) == sorted(map(tuple, (p.track.boxes[0] for p in largest)))


def test_a_person_who_leaves_and_comes_back_keeps_one_id_with_the_recogniser():
    tracks = people("leave_and_return.mp4", RETURN_FRAMES)
    assert len(tracks) == 2
    leaving = min(tracks, key=lambda p: np.nanmedian(_centres(p.track)[:, 0]))
    staying = max(tracks, key=lambda p: np.nanmedian(_centres(p.track)[:, 0]))
    assert staying.track.detected.all()
    away = np.flatnonzero(~leaving.track.has_face)
    assert away[0] <= AWAY[0] and away[-1] >= AWAY[1] - 1  # flagged while away: never edited there
    assert leaving.track.detected[:10].all() and leaving.track.detected[-10:].all()
    assert (_centres(leaving.track)[leaving.track.detected, 0] < RETURN_SIZE[0] / 2).all()


def test_without_the_recogniser_a_returning_person_gets_a_new_track():
    tracks = people("leave_and_return.mp4", RETURN_FRAMES, with_recogniser=False)
    assert len(tracks) == 3
    firsts = sorted(int(np.argmax(p.track.detected)) for p in tracks)
    assert firsts[:2] == [0, 0] and firsts[2] > AWAY[1] - 1


def test_a_reference_photo_picks_the_same_person_from_another_photo():
    tracks = people("leave_and_return.mp4", RETURN_FRAMES)
    landmarker = dlib_landmarker()
    obama = select_by_reference(tracks, describe_largest_face(_photo("obama2.jpg"), landmarker, recogniser()))
    biden = select_by_reference(tracks, describe_largest_face(_photo("biden.jpg"), landmarker, recogniser()))
    assert obama.track_id != biden.track_id
    assert np.nanmedian(_centres(obama.track)[:, 0]) < RETURN_SIZE[0] / 2 < np.nanmedian(_centres(biden.track)[:, 0])


def test_a_reference_photo_of_someone_else_is_refused_in_one_sentence():
    tracks = people("leave_and_return.mp4", RETURN_FRAMES)
    stranger = describe_largest_face(_photo("multi_face.jpg"), dlib_landmarker(), recogniser())
    with pytest.raises(UserError, match=r"^The person in the reference photo is not in the video: the nearest face "
                                        rf"track \(\d\) is at identity distance \d\.\d\d, and the same person is "
                                        rf"below {SAME_PERSON_DISTANCE}; use another photo"):
        select_by_reference(tracks, stranger)
    blank = np.full((200, 200, 3), 128, dtype=np.uint8)
    with pytest.raises(NoFaceError, match="No face was found in the reference photo"):
        describe_largest_face(blank, dlib_landmarker(), recogniser())


def test_face_ids_parse_and_select_with_clear_errors():
    tracks = people("multi_face_pan.mp4", PAN_FRAMES)
    assert parse_face_ids("all") is None and parse_face_ids(" 2, 0 ") == (2, 0)
    assert [p.track_id for p in select_by_ids(tracks, (2, 0))] == [2, 0]
    assert len(select_by_ids(tracks, None)) == 4
    with pytest.raises(UserError, match=r"^Face track 7 does not exist: this clip has 4 face track\(s\), numbered 0-3"):
        select_by_ids(tracks, (7,))
    for text in ("first", "1,,2", "-1", "1,1"):
        with pytest.raises(UserError, match="Faces"):
            parse_face_ids(text)


def test_the_preview_draws_each_track_in_its_colour_near_its_face_only():
    tracks = people("multi_face_pan.mp4", PAN_FRAMES)
    frames = _uint8("multi_face_pan.mp4", PAN_FRAMES)[:2]
    before = frames.copy()
    drawn = draw_tracks(frames, [0, 1], tracks)
    assert np.array_equal(frames, before) and drawn.shape == frames.shape
    changed = (drawn != frames).any(axis=-1)  # [2, H, W]
    near = np.zeros_like(changed)
    for person in tracks:
        x0, y0, x1, y1 = np.nanmin(person.track.landmarks[:2], axis=1).min(0).tolist() + \
            np.nanmax(person.track.landmarks[:2], axis=1).max(0).tolist()
        height = y1 - y0
        near[:, max(int(y0 - height * 0.5), 0): int(y1 + 4), max(int(x0 - 4), 0): int(x1 + height)] = True
        colour = np.array(track_colour(person.track_id))
        assert (drawn[0] == colour).all(axis=-1).sum() > height  # at least an edge of its box
    assert changed.any() and not (changed & ~near).any()


class _ScriptedDetector:
    """Detections scripted per frame (a unit-test stand-in beside the real-photo tests above)."""

    def __init__(self, script):
        self.script, self.frame = script, -1

    def detect(self, image):
        self.frame += 1
        return np.asarray(self.script[self.frame], dtype=np.float64).reshape(-1, 5)


class _BoxLandmarks:
    """68 points spread over the box (enough for the matching cost)."""

    def landmarks(self, image, box):
        grid = np.linspace(0, 1, 68)
        return np.stack([box[0] + grid * (box[2] - box[0]), box[1] + grid[::-1] * (box[3] - box[1])], axis=1)


def _scripted(script, **config):
    landmarker = FaceLandmarker(detector=_ScriptedDetector(script), predictor=_BoxLandmarks())
    frames = np.zeros((len(script), 8, 8, 3), dtype=np.uint8)
    return track_people([frames], landmarker, config=MultiTrackConfig(min_detections=1, **config), order="left_to_right")


def test_short_misses_are_filled_long_ones_end_the_track_and_a_far_face_is_someone_new():
    a = [10, 10, 50, 50, 1]
    b = [200, 10, 240, 50, 1]
    script = [[a], [a], [], [], [a, b], [b], [b], [b], [b], [b], [b], [b], [a]]  # a missing 2 frames, then 8
    tracks = _scripted(script, max_gap=3)
    assert len(tracks) == 3  # a, b, and a again after a gap longer than max_gap (no recogniser to join)
    first, second, returning = sorted(tracks, key=lambda p: int(np.argmax(p.track.detected)))
    assert first.track.has_face[:5].all() and not first.track.detected[2:4].any()  # filled, not detected
    assert not first.track.has_face[5:].any() and returning.track.detected.tolist() == [False] * 12 + [True]
    assert second.track.detected[4:12].all() and not second.track.has_face[:4].any()


def test_no_face_anywhere_is_an_error():
    with pytest.raises(NoFaceError, match=r"^No face was found in the 3 frames of the video"):
        _scripted([[], [], []])


def test_a_foreign_or_missing_recogniser_file_is_refused_in_one_sentence(tmp_path):
    from dva_model.errors import ModelFileError

    foreign = tmp_path / "dlib_face_recognition_resnet_model_v1.dat"
    foreign.write_bytes(b"not a dlib model" * 64)
    with pytest.raises(ModelFileError, match=r"dlib_face_recognition_resnet_model_v1.dat is not dlib's face recognition model \("):
        DlibRecogniser(foreign)
    with pytest.raises(ModelFileError, match=r"missing.dat does not exist; it should be dlib's face recognition model"):
        DlibRecogniser(tmp_path / "missing.dat")
