"""TeaCache's rule, fit and storage (ollimg/runtime/teacache.py, ollimg/calibrate.py) with numpy
arrays standing in for a backend's and a real store on tmp_path."""

import json

import numpy as np
import pytest

from ollimg.calibrate import check_teacache, store_calibration
from ollimg.create import create
from ollimg.errors import InvalidInput
from ollimg.manifest import Name, Store
from ollimg.runtime.teacache import CALIBRATION_FILE, Calibration, TeaCache, fit, replay, start


class NumpyBackend:
    def mean_abs(self, x):
        return float(np.abs(x).mean())

    def concat(self, xs):
        return np.concatenate(xs)


LINEAR = Calibration((1.0, 0.0), 0.0, 8, 1, 10)  # rescale(d) = d


def run_steps(cache, inputs, branches=("cond",)):
    """Drive `stack` as a family would, with hidden = the modulated input and a stack that adds 1."""
    return [cache.step(i, branches).stack(m, m, lambda h: h + 1.0) for i, m in enumerate(inputs)]


def inputs(changes, rows=1):
    """Modulated inputs whose relative L1 change at step i is changes[i - 1] (mean |m| stays 1)."""
    m, out = np.ones((rows, 4)), [np.ones((rows, 4))]
    for k, d in enumerate(changes):
        m = m.copy()
        m[:, :2] += (-1) ** k * 2 * d * np.array([-1.0, 1.0])  # mean |m - prev| = d, alternating around 1
        out.append(m)
    return out


def test_threshold_zero_never_skips():
    cache = TeaCache(NumpyBackend(), 6, 0.0, LINEAR)
    run_steps(cache, inputs([0.0] * 5))
    assert (cache.ran, cache.reused) == (6, 0)


def test_accumulates_until_the_threshold_and_always_runs_first_and_last():
    cache = TeaCache(NumpyBackend(), 8, 0.25, LINEAR)
    outs = run_steps(cache, inputs([0.1] * 7))
    # acc: 0.1 skip, 0.2 skip, 0.3 run (reset), 0.1, 0.2, 0.3 run, last step runs
    assert (cache.ran, cache.reused) == (4, 4)
    # a skipped step adds the residual of the last run (1.0) to its own input
    assert all(np.allclose(o - m, 1.0) for o, m in zip(outs, inputs([0.1] * 7)))


def test_a_large_change_runs():
    """0 runs (first), 1 skips (acc .01), 2 runs (acc 1.01), 3 skips, 4 runs (last)."""
    cache = TeaCache(NumpyBackend(), 5, 0.25, LINEAR)
    run_steps(cache, inputs([0.01, 1.0, 0.01, 0.01]))
    assert (cache.ran, cache.reused) == (3, 2)


def test_batched_branches_skip_only_together_and_keep_their_own_residuals():
    cache = TeaCache(NumpyBackend(), 4, 0.25, LINEAR)
    calm, busy = inputs([0.01, 0.01, 0.01]), inputs([0.5, 0.01, 0.01])
    stacked = [np.concatenate([a, b]) for a, b in zip(calm, busy)]
    run_steps(cache, stacked, ("cond", "uncond"))
    # step 1: cond may skip, uncond must run -> the batch runs; step 2: both may skip
    assert (cache.ran, cache.reused) == (3, 1)
    assert set(cache.branches) == {"cond", "uncond"}


def test_a_branch_keeps_its_cache_when_the_batch_changes():
    """CFG truncation: the batched forward stops and the positive branch alone goes on."""
    cache = TeaCache(NumpyBackend(), 4, 0.25, LINEAR)
    m = inputs([0.01, 0.01, 0.01])
    cache.step(0, ("cond", "uncond")).stack(np.concatenate([m[0], m[0]]), np.concatenate([m[0], m[0]]), lambda h: h + 2)
    out = cache.step(1, ("cond",)).stack(m[1], m[1], lambda h: h + 5)
    assert cache.reused == 1 and np.allclose(out - m[1], 2.0)


def test_separate_branch_forwards_decide_alone_and_a_step_is_reused_only_when_both_are():
    """A family that runs its CFG branches as two forwards per step (FLUX.2 klein base)."""
    cache = TeaCache(NumpyBackend(), 4, 0.25, LINEAR)
    calm, busy = inputs([0.01, 0.01, 0.01]), inputs([0.5, 0.01, 0.01])
    outs = []
    for i in range(4):
        outs.append(cache.step(i, ("cond",)).stack(calm[i], calm[i], lambda h: h + 1.0))
        outs.append(cache.step(i, ("uncond",)).stack(busy[i], busy[i], lambda h: h + 3.0))
    # step 1: cond reuses, uncond runs (the step ran); step 2: both reuse; steps 0 and 3 run
    assert (cache.ran, cache.reused) == (3, 1) and cache.reused_steps == {1, 2}
    assert np.allclose(outs[2] - calm[1], 1.0) and np.allclose(outs[5] - busy[2], 3.0)


def test_record_runs_every_step_and_traces_changes():
    cache = TeaCache(NumpyBackend(), 4, record=True)
    run_steps(cache, inputs([0.1, 0.2, 0.3]))
    assert (cache.ran, cache.reused) == (4, 0)
    assert [(b, i) for b, i, *_ in cache.trace] == [("cond", 1), ("cond", 2), ("cond", 3)]
    assert [round(d, 6) for _, _, d, _ in cache.trace] == [0.1, 0.2, 0.3]


def test_fit_recovers_a_polynomial_and_replays_the_rule():
    x = np.linspace(0.01, 0.5, 40)
    y = 3 * x ** 2 + 0.5 * x
    runs = [[0.1] * 7, [0.3] * 7]
    calibration = fit(list(zip(x, y)), 8, 2, runs)
    assert calibration.fit_error < 1e-9
    assert calibration.rescale(0.2) == pytest.approx(3 * 0.04 + 0.1)
    assert calibration.skipped["0.05"] == replay(calibration, runs, 8, 0.05)
    # rescale(0.1) = 0.08: at 0.1 every other step runs; at 1.2, every middle step is skipped
    assert replay(calibration, [[0.1] * 7], 8, 0.1) == pytest.approx(3 / 8)
    assert replay(calibration, [[0.1] * 7], 8, 100.0) == pytest.approx(6 / 8)
    assert Calibration.from_json(json.loads(json.dumps(calibration.to_json())), "m") == calibration


def test_fit_needs_enough_pairs():
    with pytest.raises(InvalidInput, match="at least"):
        fit([(0.1, 0.1)] * 3, 4, 1, [[0.1]])


@pytest.mark.parametrize("data", [{}, {"coefficients": []}, {"coefficients": ["x"], "fit_error": 0, "steps": 8,
                                                                 "prompts": 1}])
def test_a_broken_calibration_file_is_refused(data):
    with pytest.raises(InvalidInput, match="ollimg calibrate"):
        Calibration.from_json(data, "model m")


class Pipe:
    backend, name, calibration = NumpyBackend(), "m:latest", None

    def generate(self, prompt, *, teacache=None, teacache_record=False):
        raise AssertionError("not called here")


class OldFamily:
    name = "k:latest"

    def generate(self, prompt, *, steps=None):
        raise AssertionError("never called")


def test_a_family_that_has_not_opted_in_is_refused():
    from ollimg.runtime.teacache import calibrate, supported

    assert supported(Pipe()) and not supported(OldFamily())
    with pytest.raises(InvalidInput, match="not available for this model family"):
        calibrate(OldFamily(), ["a prompt"])


def test_an_uncalibrated_model_refuses_caching():
    assert start(Pipe(), 8, None) is None
    with pytest.raises(InvalidInput, match="run: ollimg calibrate m:latest"):
        start(Pipe(), 8, 0.3)
    pipe = Pipe()
    pipe.calibration = LINEAR
    assert start(pipe, 8, 0.3).threshold == 0.3
    with pytest.raises(InvalidInput, match="0 to 100"):
        start(pipe, 8, -1.0)


def test_the_calibration_is_a_layer_of_a_new_manifest_sharing_every_blob(tiny_zimage_dir, store_dir):
    store = Store()
    name = Name.parse("tiny")
    model = create(store, name, tiny_zimage_dir)
    with pytest.raises(InvalidInput, match="run: ollimg calibrate tiny:latest"):
        check_teacache(model, 0.3)
    assert check_teacache(model, None) is None
    first = store_calibration(store, model, LINEAR.to_json())
    assert first.digest != model.digest
    old = {d.digest for d in model.manifest.blobs()}
    new = {d.digest for d in first.manifest.blobs()}
    added = new - old
    assert old <= new and len(added) == 1
    layer = [l for l in first.manifest.file_layers() if l.title == CALIBRATION_FILE]
    assert len(layer) == 1 and json.loads(store.blobs.path(layer[0].digest).read_bytes()) == LINEAR.to_json()
    assert check_teacache(first, 0.3) == 0.3
    second = store_calibration(store, first, Calibration((2.0, 0.0), 0.0, 8, 1, 10).to_json())
    assert len([l for l in second.manifest.layers if l.title == CALIBRATION_FILE]) == 1
    assert store.get(name).digest == second.digest
    assert {d.digest for d in second.manifest.blobs()} - new and old <= {d.digest for d in second.manifest.blobs()}
