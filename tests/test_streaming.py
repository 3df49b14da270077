"""predict_batch, stream, thread safety and tiling through the Predictor."""
import threading
import time

import numpy as np
import pytest

from ancis_fast import Predictor
from ancis_fast.predictor import PredictorConfig
from ancis_fast.streaming import LatestFrame
from conftest import blob_image

SIZE = (128, 128)


@pytest.fixture(scope="module")
def predictor(models):
    # the release's detection limits: random weights otherwise give hundreds of cells a tile
    return Predictor.from_models(*models, backend="reference", config=PredictorConfig(
        input_size=SIZE, max_candidates=200, max_detections=500, tile_size=SIZE[0]))


@pytest.fixture(scope="module")
def frames():
    return [blob_image(seed=s) for s in range(5)]


@pytest.fixture(scope="module")
def serial(predictor, frames):
    return [predictor.predict(f) for f in frames]


def _same(a, b):
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.label_image(), b.label_image())


def test_predict_batch_equals_predict(predictor, frames, serial):
    for got, want in zip(predictor.predict_batch(frames), serial):
        _same(got, want)


def test_stream_keeps_order_and_reports_stats(predictor, frames, serial):
    stream = predictor.stream(frames, max_queue=2)
    results = list(stream)
    assert [r.meta["frame_index"] for r in results] == list(range(len(frames)))
    for got, want in zip(results, serial):
        _same(got, want)
    summary = stream.stats.summary()
    assert summary["frames_out"] == len(frames) and summary["dropped"] == 0
    assert summary["latency_ms_median"] > 0 and summary["fps"] > 0


def test_stream_drop_oldest_skips_frames_for_a_slow_consumer(predictor):
    frames = [blob_image(64, 64, seed=s) for s in range(30)]
    stream = predictor.stream(frames, max_queue=1, drop_oldest=True)
    seen = []
    for inst in stream:
        seen.append(inst.meta["frame_index"])
        time.sleep(0.05)
    assert stream.stats.dropped > 0
    assert seen == sorted(seen) and seen[-1] == 29
    assert len(seen) + stream.stats.dropped == 30


def test_stream_raises_on_a_bad_frame_and_can_stop_early(predictor, frames):
    with pytest.raises(ValueError, match="channels"):
        list(predictor.stream([frames[0], np.zeros((8, 8, 5), np.uint8)]))
    stream = predictor.stream(iter(frames * 100))
    next(stream)
    stream.close()
    assert not stream._thread.is_alive()


def test_concurrent_predict_equals_serial(predictor, frames, serial):
    results = [None] * 8

    def work(i):
        results[i] = predictor.predict(frames[i % len(frames)])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads[:4]:
        t.start()
    for t in threads[4:]:
        t.start()
    for t in threads:
        t.join()
    for i, got in enumerate(results):
        _same(got, serial[i % len(frames)])


def test_tiled_predict_through_the_predictor(predictor):
    image = blob_image(260, 300, cells=40, seed=9)
    tiled = predictor.predict(image, tile=128, overlap=32)
    assert tiled.image_size == (260, 300)
    assert len(tiled) > 0 and (np.diff(tiled.scores) <= 0).all()
    assert (tiled.boxes[:, 2] <= 260 + 128).all()
    predictor.auto_tile_above = 200
    try:
        auto = predictor.predict(image)
    finally:
        predictor.auto_tile_above = 2048
    explicit = predictor.predict(image, tile=predictor.config.tile_size, overlap=64)
    _same(auto, explicit)


def test_predict_reports_each_tile_to_on_tile_and_stops_where_it_raises(predictor):
    image = blob_image(260, 300, cells=30, seed=3)
    calls = []
    found = predictor.predict(image, tile=128, overlap=32, on_tile=lambda done, total: calls.append((done, total)))
    total = calls[0][1]
    assert calls == [(done, total) for done in range(1, total + 1)] and total == 9  # 3 x 3 tiles of 128 over 32
    _same(found, predictor.predict(image, tile=128, overlap=32))

    class Stop(Exception):
        pass

    def stop_after_two(done, total):
        if done == 2:
            raise Stop
        calls.append(done)

    calls.clear()
    with pytest.raises(Stop):
        predictor.predict(image, tile=128, overlap=32, on_tile=stop_after_two)
    assert calls == [1]


def test_latest_frame_hands_over_the_newest_frame_and_drops_the_rest():
    frames = LatestFrame()
    taken = []
    consumer_busy = threading.Event()
    release = threading.Event()

    def consume():
        for frame in frames:
            taken.append(frame)
            consumer_busy.set()
            release.wait(5)
            release.clear()

    thread = threading.Thread(target=consume)
    thread.start()
    frames.put("a", tag="tag a")
    assert consumer_busy.wait(5)  # "a" taken at once; the consumer now holds it
    for frame in "bcd":
        frames.put(frame, tag=f"tag {frame}")
    assert frames.waiting and frames.dropped == 2  # "b" and "c" superseded by "d"
    release.set()
    deadline = time.monotonic() + 5
    while len(taken) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    frames.close()
    release.set()
    thread.join(5)
    assert taken == ["a", "d"] and not thread.is_alive()
    assert frames.tag(1) == "tag d"
    with pytest.raises(KeyError):
        frames.tag(0)  # forgotten once a later frame's tag was fetched
    with pytest.raises(RuntimeError, match="closed"):
        frames.put("e")


def test_stream_over_latest_frame_segments_what_the_source_gave_last(predictor, frames, serial):
    mailbox = LatestFrame()
    stream = predictor.stream(mailbox, max_queue=1, drop_oldest=True)
    for index, frame in enumerate(frames[:2]):
        mailbox.put(frame, tag=index)
        result = next(stream)
        assert mailbox.tag(result.meta["frame_index"]) == index
        _same(result, serial[index])
    mailbox.close()
    assert list(stream) == []
