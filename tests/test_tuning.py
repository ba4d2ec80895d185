"""The tuner: measures the capable fast backends once per problem, keeps the fastest, remembers it on disk."""

import json
import threading
import time
from datetime import datetime, timezone

import pytest
import torch
import torch.nn.functional as F

import groupconv
from groupconv import ops
from groupconv.ops.backends.aten import AtenBackend
from groupconv.ops.dispatch import forget_choices
from groupconv.ops.tuning import disk_cache, memory, observation, timing
from groupconv.ops.tuning import tuner as tuning_module
from groupconv.ops.tuning.tuner import Measurement


class SlowedAten(AtenBackend):
    """torch's conv plus 20 ms per forward call: a real backend the tuner must never pick."""

    name = "slowed-aten"
    description = "test backend"
    baseline = False  # torch's kernels are the aten backend's; this one is only built from them

    def __init__(self):
        self.forward_calls = 0

    def conv_forward(self, *args):
        self.forward_calls += 1
        time.sleep(0.02)
        return super().conv_forward(*args)


# A contender's runs while measured: its warm-up (the minimum: the fixture's), three timed (the fixture's), one whose
# peak memory is measured.
def calls_per_measurement() -> int:
    """The calls one measurement makes: the warm-up, three timed runs, and a peak-memory run where it can count."""
    return tuning_module.MIN_WARMUP_CALLS + 3 + (1 if memory.can_measure() else 0)


@pytest.fixture
def tuning(tmp_path, monkeypatch):
    """Tuning on, a private cache directory, and the slowed backend at the top of the priority order."""
    monkeypatch.setenv("GROUPCONV_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tuning_module, "MAX_TIMED_RUNS", 3)  # exactly three timed runs: the tests count calls
    # Every contender steady after its minimum warm-up and never falling: the tests count calls and read the cache
    # file, whatever the machine's load; the warm-up's and the cold measurement's rules have tests of their own, on
    # fixed timings.
    monkeypatch.setattr(tuning_module, "STEADY_TOLERANCE", float("inf"))
    monkeypatch.setattr(tuning_module, "FALLING_RATIO", float("inf"))
    slowed = SlowedAten()
    ops.register_backend(slowed, priority=100)
    ops.set_tuning(True)
    ops.clear_tuning_cache()
    yield slowed
    ops.set_tuning(None)
    ops.unregister_backend(slowed.name)
    ops.clear_tuning_cache()


def grouped_conv_call():
    """A grouped conv that only torch's kernels run fast (20 channels per group is too wide for native), in
    channels_last: the contenders are the backends alone (an NCHW one would add the via-channels_last strategy)."""
    x, w = torch.randn(2, 80, 6, 6).contiguous(memory_format=torch.channels_last), torch.randn(8, 20, 3, 3)
    return x, w, lambda: groupconv.conv2d(x, w, padding=1, groups=4)


def test_the_fastest_backend_is_measured_once_and_remembered_on_disk(tuning):
    x, w, call = grouped_conv_call()
    torch.testing.assert_close(call(), F.conv2d(x, w, padding=1, groups=4))
    problem = ops.conv_problem(x, w, padding=1, groups=4)
    assert ops.select_backend(problem).name == "aten"  # priority says slowed-aten; the measurement says aten
    measured_calls = tuning.forward_calls
    assert measured_calls == calls_per_measurement()  # never the call itself

    decisions = json.loads(ops.cache_path().read_text())
    entry = decisions[repr(problem)]
    assert entry["backend"] == "aten" and set(entry["seconds"]) == {"slowed-aten", "aten"}  # reference: not tunable
    # (The slowed backend sleeps 20 ms a call; torch's own time is not bounded here: on a loaded machine its second
    # thread may take as long to wake.)
    assert entry["seconds"]["slowed-aten"] > 0.02 and entry["seconds"]["aten"] < entry["seconds"]["slowed-aten"]
    record = entry["measured"]  # how it was measured
    assert record["warm"] and record["unsteady"] == record["falling"] == [] and record["timed_runs"] == 3
    assert record["warmup_calls"] == {"slowed-aten": tuning_module.MIN_WARMUP_CALLS,
                                      "aten": tuning_module.MIN_WARMUP_CALLS}
    assert datetime.fromisoformat(record["at"]) <= datetime.now(timezone.utc)
    if memory.can_measure():  # the same kernels held the same: the output (2x8x6x6 floats) and oneDNN's buffers
        assert entry["peak_bytes"]["slowed-aten"] == entry["peak_bytes"]["aten"] >= 2 * 8 * 6 * 6 * 4
    assert "-> aten: can run (measured" in ops.explain_conv(x, w, padding=1, groups=4)
    assert f"measured {record['at']}: warm, kept on disk" in ops.explain_conv(x, w, padding=1, groups=4)

    call()
    forget_choices()  # as a new process would start: only the disk remembers
    call()
    assert tuning.forward_calls == measured_calls


def test_a_forced_backend_is_never_measured(tuning):
    _, _, call = grouped_conv_call()
    with ops.use_backend("slowed-aten"):
        call()
    assert tuning.forward_calls == 1 and not ops.cache_path().exists()


def test_tuning_off_follows_priority_and_writes_nothing(tuning, monkeypatch):
    ops.set_tuning(None)
    monkeypatch.setenv("GROUPCONV_TUNE", "0")
    assert not ops.tuning_enabled()
    _, _, call = grouped_conv_call()
    call()
    assert tuning.forward_calls == 1 and not ops.cache_path().exists()


def test_clear_tuning_cache_forgets_decisions(tuning):
    _, _, call = grouped_conv_call()
    call()
    assert ops.cache_path().exists()
    ops.clear_tuning_cache()
    assert not ops.cache_path().exists()
    call()
    assert tuning.forward_calls == 2 * calls_per_measurement()


def test_cache_file_is_named_after_the_kernels_it_measured(tmp_path):
    """Decisions measured against one version of groupconv's kernels are not read by another."""
    (tmp_path / "csrc").mkdir()
    (tmp_path / "ops" / "backends" / "triton").mkdir(parents=True)
    (tmp_path / "csrc" / "kernel.cpp").write_text("void f() {}")
    (tmp_path / "ops" / "backends" / "triton" / "kernels.py").write_text("# triton")
    before = disk_cache.sources_fingerprint(tmp_path)
    (tmp_path / "csrc" / "kernel.cpp").write_text("void f() { /* faster */ }")
    after = disk_cache.sources_fingerprint(tmp_path)
    (tmp_path / "README").write_text("not a kernel")
    assert before != after == disk_cache.sources_fingerprint(tmp_path)
    assert f"-kernels{disk_cache.kernels_fingerprint()}" in ops.cache_path().name


def test_threads_meeting_a_new_problem_measure_it_once(tuning):
    """Four threads make the same first call at once: one measures, the others wait and take its decision."""
    x, w, call = grouped_conv_call()
    results, errors = [], []

    def worker():
        try:
            results.append(call())
        except Exception as error:  # reported below: a thread's exception would otherwise vanish
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(results) == 4
    for result in results:
        torch.testing.assert_close(result, F.conv2d(x, w, padding=1, groups=4))
    assert tuning.forward_calls == calls_per_measurement()
    assert len(json.loads(ops.cache_path().read_text())) == 1


@pytest.mark.native
def test_a_first_call_inside_a_peak_memory_measurement_is_tuned_by_time(tuning):
    """A user's peak_allocated_bytes around a call that tunes: the tuner cannot count memory inside that count (one
    counter), so it decides by time, and says so on disk (no peak_bytes: a later process weighs memory again); no
    deadlock on the shared measurement lock. Measurements do not nest directly either: a clear error."""
    x, w, call = grouped_conv_call()
    result = {}
    thread = threading.Thread(target=lambda: result.update(peak=memory.peak_allocated_bytes(call)), daemon=True)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive(), "peak_allocated_bytes around a tuning call did not return"
    assert result["peak"] > 0
    entry = json.loads(ops.cache_path().read_text()).popitem()[1]
    assert entry["backend"] == "aten" and "peak_bytes" not in entry
    with pytest.raises(RuntimeError, match="do not nest"):
        memory.peak_allocated_bytes(lambda: memory.peak_allocated_bytes(lambda: None))
    assert not memory.is_measuring()


def test_an_unreadable_cache_is_measured_again_and_replaced(tuning):
    ops.cache_path().parent.mkdir(parents=True, exist_ok=True)
    ops.cache_path().write_text("{not json")
    disk_cache._decisions = None  # read the file again, as a new process would
    _, _, call = grouped_conv_call()
    with pytest.warns(RuntimeWarning, match="ignoring unreadable cache"):
        call()
    assert json.loads(ops.cache_path().read_text())  # valid JSON again, with the new decision


def test_set_tuning_rejects_non_booleans():
    with pytest.raises(TypeError, match="enabled='yes' must be True, False or None"):
        ops.set_tuning("yes")


class BrokenAten(AtenBackend):
    """A backend whose forward raises: measuring must leave it out, warn, and pick a working one."""

    name = "broken-aten"
    description = "test backend"

    def conv_forward(self, *args):
        raise RuntimeError("kernel exploded")


def test_a_backend_that_fails_while_measured_is_not_chosen(tuning):
    broken = BrokenAten()
    ops.register_backend(broken, priority=200)
    try:
        x, w, call = grouped_conv_call()
        with pytest.warns(RuntimeWarning, match="'broken-aten' failed while being measured: kernel exploded"):
            torch.testing.assert_close(call(), F.conv2d(x, w, padding=1, groups=4))
        entry = json.loads(ops.cache_path().read_text())[repr(ops.conv_problem(x, w, padding=1, groups=4))]
        assert entry["backend"] == "aten" and entry["seconds"]["broken-aten"] == float("inf")
        measured_calls = tuning.forward_calls
        forget_choices()  # as a new process would start: the failure is remembered, nothing is measured again
        call()
        assert tuning.forward_calls == measured_calls
    finally:
        ops.unregister_backend(broken.name)


def test_short_runs_are_timed_more_often():
    calls = {"short": 0, "long": 0}

    def short():
        calls["short"] += 1

    def long():
        calls["long"] += 1
        time.sleep(tuning_module.TARGET_SECONDS)

    short_warmup = tuning_module.measure({"short": short}).warmup_calls["short"]
    long_warmup = tuning_module.measure({"long": long}).warmup_calls["long"]
    assert calls == {"short": short_warmup + tuning_module.MAX_TIMED_RUNS,
                     "long": long_warmup + tuning_module.TIMED_RUNS}


def test_contenders_are_timed_in_alternation():
    from groupconv.ops.tuning.timing import median_seconds_interleaved, seconds_interleaved

    order = []
    names = "abcd"
    seconds = median_seconds_interleaved({name: lambda name=name: order.append(name) for name in names},
                                         repeats=40, warmup=1)
    assert order[:4] == list(names) and set(seconds) == set(names)  # (the warm-up runs)
    rounds = [order[i:i + 4] for i in range(4, len(order), 4)]
    assert len(rounds) == 40 and all(sorted(r) == list(names) for r in rounds)  # every fn once a round
    # The orders change from round to round: each fn follows each other one.
    followed = {(before, after) for before, after in zip(order[4:], order[5:])}
    assert followed >= {(a, b) for a in names for b in names if a != b}
    rounds = seconds_interleaved({"a": lambda: time.sleep(0.002), "b": lambda: None}, repeats=3, warmup=0)
    assert [len(rounds["a"]), len(rounds["b"])] == [3, 3] and min(rounds["a"]) > max(rounds["b"])


def test_a_decision_is_measured_again_when_a_new_backend_can_run_the_problem(tuning):
    _, _, call = grouped_conv_call()
    call()
    assert tuning.forward_calls == calls_per_measurement()
    newcomer = SlowedAten()
    newcomer.name = "newcomer"
    ops.register_backend(newcomer, priority=50)
    try:
        call()  # the remembered decision did not weigh the newcomer: all are measured again
        assert tuning.forward_calls == 2 * calls_per_measurement() and newcomer.forward_calls == calls_per_measurement()
        assert set(json.loads(ops.cache_path().read_text()).popitem()[1]["seconds"]) == {"slowed-aten", "aten",
                                                                                           "newcomer"}
    finally:
        ops.unregister_backend(newcomer.name)


def test_torch_kernels_are_kept_unless_another_backend_is_clearly_faster(tuning, monkeypatch):
    """A near tie goes to torch's kernels (a call settled on them runs F.convNd directly, with less Python than any
    other route); a clear win goes to the winner. The timings are fixed here: the rule, not the clock, is tested."""
    x, w, _ = grouped_conv_call()
    problem = ops.conv_problem(x, w, padding=1, groups=4)
    contenders = [ops.get_backend("slowed-aten"), ops.get_backend("aten")]
    for slowed_seconds, aten_seconds, expected in ((86e-6, 87e-6, "aten"), (0.0099, 0.010, "aten"),
                                                   (0.005, 0.010, "slowed-aten"), (40e-6, 100e-6, "slowed-aten")):
        timings = {"slowed-aten": slowed_seconds, "aten": aten_seconds}
        monkeypatch.setattr(tuning_module, "measure", lambda runs, timings=timings: Measurement(timings))
        ops.clear_tuning_cache()
        assert tuning_module.choose(problem, contenders, lambda backend: None).name == expected


class HungryAten(AtenBackend):
    """torch's conv holding one more input-sized buffer while it runs: faster by fixed timings, never chosen."""

    name = "hungry-aten"
    description = "test backend"
    baseline = False

    def conv_forward(self, input, weight, bias, args):
        spare = torch.empty_like(input)
        out = super().conv_forward(input, weight, bias, args)
        del spare
        return out


@pytest.mark.native
def test_a_backend_that_holds_more_memory_than_torchs_kernels_is_not_chosen(tuning, monkeypatch):
    """The memory rule: forward+backward never holds more memory than torch's would. A contender measured faster
    that holds more than torch's kernels for the same op loses to them; the peaks are on disk and in explain."""
    hungry = HungryAten()
    ops.register_backend(hungry, priority=100)
    try:
        x, w, call = grouped_conv_call()
        problem = ops.conv_problem(x, w, padding=1, groups=4)
        monkeypatch.setattr(tuning_module, "measure",
                            lambda runs: Measurement({"hungry-aten": 1e-4, "slowed-aten": 1.0, "aten": 1.0}))
        call()
        assert ops.select_backend(problem).name == "aten"
        peaks = json.loads(ops.cache_path().read_text())[repr(problem)]["peak_bytes"]
        assert peaks["hungry-aten"] >= peaks["aten"] + x.numel() * x.element_size()
        assert "hungry-aten: can run (measured 0.100 ms, peak memory" in ops.explain_conv(x, w, padding=1, groups=4)
    finally:
        ops.unregister_backend(hungry.name)


def test_without_a_memory_count_decisions_are_made_by_time_and_still_remembered(tuning, monkeypatch):
    """Where the native module is not built, nothing counts the CPU allocator's bytes: the tuner decides by time
    alone, and the decision on disk still holds for later processes."""
    monkeypatch.setattr(memory, "can_measure", lambda: False)
    x, w, call = grouped_conv_call()
    call()
    entry = json.loads(ops.cache_path().read_text())[repr(ops.conv_problem(x, w, padding=1, groups=4))]
    assert entry["backend"] == "aten" and "peak_bytes" not in entry
    measured_calls = tuning.forward_calls
    assert measured_calls == tuning_module.MIN_WARMUP_CALLS + 3
    forget_choices()
    call()
    assert tuning.forward_calls == measured_calls


@pytest.mark.native
def test_batch_norm_is_tuned_like_the_convs(tuning):
    """The fused batch norm's backends are measured on the call's own tensors and the decision kept on disk; the
    measurements run on copies of the running statistics, which the call itself updates once."""
    x, residual = torch.randn(8, 16, 32, 32), torch.randn(8, 16, 32, 32)  # 131,072 values: the native kernel's size
    running_mean, running_var = torch.zeros(16), torch.ones(16)
    out = ops.batch_norm(x, running_mean, running_var, None, None, True, residual=residual, relu=True)
    expected_mean, expected_var = torch.zeros(16), torch.ones(16)
    expected = F.relu(F.batch_norm(x, expected_mean, expected_var, None, None, True) + residual)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close((running_mean, running_var), (expected_mean, expected_var))
    problem = ops.batch_norm_problem(x, True, residual=residual, relu=True)
    entry = json.loads(ops.cache_path().read_text())[repr(problem)]
    assert set(entry["seconds"]) == {"native", "slowed-aten", "aten"}  # reference: not tunable
    assert entry["backend"] in entry["seconds"]
    assert f"-> {entry['backend']}: can run (measured" in ops.explain_batch_norm(x, residual=residual, relu=True)


@pytest.fixture
def scripted_clock(monkeypatch):
    """Each run returns the seconds its call is to take, and the tuner's clock reads them: the warm-up's and the cold
    measurement's rules are tested on fixed timings, not on this machine's load."""
    monkeypatch.setattr(tuning_module, "seconds_of", lambda run: run())
    monkeypatch.setattr(timing, "seconds_of", lambda run: run())


def scripted(*seconds, then=None):
    """A run taking `seconds` on its first calls, then `then` (the last of them by default) on every later call."""
    calls = iter(seconds)
    return lambda: next(calls, seconds[-1] if then is None else then)


def test_each_contender_is_warmed_up_until_two_calls_agree(scripted_clock):
    measurement = tuning_module.measure({"falling": scripted(0.05, 0.03, 0.02, 0.02), "flat": scripted(0.01)},
                                        repeats=3)
    assert measurement.warmup_calls == {"falling": 4, "flat": 2}
    assert measurement.seconds == {"falling": 0.02, "flat": 0.01}
    assert measurement.warm and measurement.timed_runs == 3


def test_a_contender_that_never_settles_makes_the_measurement_cold(scripted_clock):
    swinging = scripted(*[0.01, 0.02] * tuning_module.MAX_WARMUP_CALLS, then=0.01)
    measurement = tuning_module.measure({"swinging": swinging, "flat": scripted(0.01)}, repeats=3)
    assert measurement.warmup_calls == {"swinging": tuning_module.MAX_WARMUP_CALLS, "flat": 2}
    assert measurement.unsteady == ["swinging"] and not measurement.warm
    assert not measurement.record()["warm"] and measurement.record()["unsteady"] == ["swinging"]


def test_timed_runs_still_getting_faster_make_the_measurement_cold(scripted_clock):
    """Two slow calls agree (a steady warm-up, by its rule), then the kernel speeds up while timed: cold."""
    measurement = tuning_module.measure({"late": scripted(0.05, 0.05, 0.05, 0.05, 0.01), "flat": scripted(0.01)},
                                        repeats=4)
    assert measurement.warmup_calls == {"late": 2, "flat": 2} and measurement.falling == ["late"]
    assert not measurement.warm


def test_the_warm_up_stops_at_its_time_budget(scripted_clock, monkeypatch):
    monkeypatch.setattr(tuning_module, "WARMUP_BUDGET_SECONDS", 0.0)
    swinging = scripted(*[0.01, 0.02] * tuning_module.MAX_WARMUP_CALLS, then=0.01)
    measurement = tuning_module.measure({"swinging": swinging}, repeats=3)
    assert measurement.warmup_calls == {"swinging": tuning_module.MIN_WARMUP_CALLS} and not measurement.warm


def test_a_decision_measured_cold_holds_for_this_process_only(tuning, monkeypatch):
    measurements = []

    def cold_measure(runs):
        measurements.append(set(runs))
        return Measurement({"slowed-aten": 1.0, "aten": 1e-3}, unsteady=["aten"])

    monkeypatch.setattr(tuning_module, "measure", cold_measure)
    monkeypatch.setattr(memory, "can_measure", lambda: False)
    x, w, call = grouped_conv_call()
    call()
    problem = ops.conv_problem(x, w, padding=1, groups=4)
    assert ops.select_backend(problem).name == "aten" and len(measurements) == 1
    explained = ops.explain_conv(x, w, padding=1, groups=4)
    assert "-> aten: can run (measured 1.000 ms" in explained
    assert "cold (not steady: aten; still getting faster: none), kept for this process only" in explained
    assert not ops.cache_path().exists()  # never written
    call()
    assert len(measurements) == 1  # this process keeps it
    forget_choices()
    call()
    assert len(measurements) == 2  # not remembered as a decision that holds: measured again


def test_a_decision_written_before_measurements_were_recorded_is_measured_again(tuning):
    """A cache file from before decisions said how they were measured stays readable; its decisions may have been
    measured cold, so each is measured once more and replaced."""
    x, w, call = grouped_conv_call()
    problem = ops.conv_problem(x, w, padding=1, groups=4)
    old = {"backend": "slowed-aten", "seconds": {"slowed-aten": 1e-4, "aten": 1.0}}
    if memory.can_measure():
        old["peak_bytes"] = {"slowed-aten": 1, "aten": 1}
    ops.cache_path().parent.mkdir(parents=True, exist_ok=True)
    ops.cache_path().write_text(json.dumps({repr(problem): old}))
    disk_cache._decisions = None  # read the file again, as a new process would
    call()
    assert tuning.forward_calls == calls_per_measurement()
    entry = json.loads(ops.cache_path().read_text())[repr(problem)]
    assert entry["backend"] == "aten" and entry["measured"]["warm"]


def test_a_decision_its_calls_contradict_is_measured_again_a_bounded_number_of_times(tuning, monkeypatch):
    """The slowed backend measured (falsely) fastest: its sampled calls take 20 ms, far above the 0.1 ms measured, so
    the problem is measured again, at most MAX_RECHECKS times in the process; the calls in between are not timed."""
    monkeypatch.setattr(observation, "SAMPLE_EVERY", 2)
    measurements = []

    def wrong_measure(runs):
        measurements.append(1)
        return Measurement({"slowed-aten": 1e-4, "aten": 1.0})

    monkeypatch.setattr(tuning_module, "measure", wrong_measure)
    monkeypatch.setattr(memory, "can_measure", lambda: False)
    x, w, call = grouped_conv_call()
    problem = ops.conv_problem(x, w, padding=1, groups=4)
    call()  # measured: the slowed backend is chosen
    calls_to_fill_a_window = observation.SAMPLE_EVERY * observation.WINDOW
    for _ in range(calls_to_fill_a_window):
        call()
    assert len(measurements) == 1 and len(observation.watch_for(problem).samples) == observation.WINDOW
    call()  # the window's median is 200x the measurement: measured again
    assert len(measurements) == 2
    for _ in range(3 * calls_to_fill_a_window):
        call()
    assert len(measurements) == 1 + observation.MAX_RECHECKS
    assert tuning.forward_calls == 4 * calls_to_fill_a_window + 2  # the calls alone: measure() is fixed here
    ops.set_tuning(False)  # the choices are forgotten, and what was known of their calls with them
    assert observation.watch_for(problem) is None


def test_calls_that_agree_with_the_measurement_are_never_measured_again(tuning, monkeypatch):
    """Calls within RECHECK_RATIO of the measured time leave the decision alone."""
    monkeypatch.setattr(observation, "SAMPLE_EVERY", 2)
    measurements = []

    def measure(runs):
        measurements.append(1)
        # Its calls take 20 ms and a tiny conv: up to ~35 ms more on a loaded 2-core machine, where the conv's second
        # thread must be woken after the sleep. Within 1.5x of 60 ms either way.
        return Measurement({"slowed-aten": 0.06, "aten": 1.0})

    monkeypatch.setattr(tuning_module, "measure", measure)
    monkeypatch.setattr(memory, "can_measure", lambda: False)
    _, _, call = grouped_conv_call()
    for _ in range(2 * observation.SAMPLE_EVERY * observation.WINDOW + 1):
        call()
    assert len(measurements) == 1


def test_a_cold_decision_is_measured_again_once_its_calls_have_been_observed(tuning, monkeypatch):
    monkeypatch.setattr(observation, "SAMPLE_EVERY", 2)
    # (the slowed backend chosen first: a call settled on torch's kernels runs them directly, unobserved)
    results = [Measurement({"slowed-aten": 0.03, "aten": 1.0}, falling=["aten"]),
               Measurement({"slowed-aten": 1.0, "aten": 1e-3})]
    monkeypatch.setattr(tuning_module, "measure", lambda runs: results.pop(0))
    monkeypatch.setattr(memory, "can_measure", lambda: False)
    x, w, call = grouped_conv_call()
    for _ in range(1 + observation.SAMPLE_EVERY * observation.WINDOW):  # measured, then a window observed
        call()
    assert not ops.cache_path().exists() and len(results) == 1
    call()  # measured again, warm this time: written
    entry = json.loads(ops.cache_path().read_text())[repr(ops.conv_problem(x, w, padding=1, groups=4))]
    assert not results and entry["backend"] == "aten" and entry["measured"]["warm"]


class Recorder:
    def __init__(self):
        self.name = "recorder"

    def conv_backward_input_accumulating(self, *args):
        return None  # no kernel for the call: the caller runs the plain op next

    def conv_backward_input(self, *args):
        time.sleep(0.002)
        return "gradient"


def test_a_sampled_call_times_the_op_that_ran():
    watch = observation.Watch("recorder", measured_seconds=1e-3, cold=False, rechecks=0)
    timed = observation.TimedBackend(Recorder(), watch)
    assert timed.name == "recorder" and timed.conv_backward_input_accumulating() is None
    assert timed.conv_backward_input() == "gradient"
    assert len(watch.samples) == 1 and watch.samples[0] >= 0.002
