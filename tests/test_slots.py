"""The slot plan of hydra/launcher=parallel: which GPU or cores each worker gets."""

import pytest

from dreamlab import slots
from dreamlab.errors import DreamlabError


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setenv(slots.PRETEND_GPUS_ENV, "0,1")


def test_one_worker_per_gpu_each_seeing_only_its_own(two_gpus):
    plan = slots.plan()
    assert [s.gpu for s in plan] == ["0", "1"]
    assert [slots.worker_env(s)["CUDA_VISIBLE_DEVICES"] for s in plan] == ["0", "1"]
    assert [s.device for s in plan] == ["gpu:0 (pretend)", "gpu:1 (pretend)"]


def test_workers_per_gpu_and_picked_gpus(two_gpus):
    assert [s.gpu for s in slots.plan(workers_per_gpu=2)] == ["0", "0", "1", "1"]
    assert [s.gpu for s in slots.plan(gpus=[1])] == ["1"]
    assert len(slots.plan(jobs=1)) == 1  # never more workers than jobs


def test_a_gpu_that_is_not_visible_is_refused_in_one_line(two_gpus):
    with pytest.raises(DreamlabError, match=r"asks for GPU 7 but the visible GPUs are \[0,1\]"):
        slots.plan(gpus=[7])


def test_without_gpus_one_worker_per_core_pinned_to_it(monkeypatch):
    monkeypatch.delenv(slots.PRETEND_GPUS_ENV, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    cores = slots.available_cores()
    plan = slots.plan()
    assert len(plan) == min(len(cores), max(1, slots.available_memory() // slots.WORKER_MEMORY_BYTES))
    assert all(len(s.cores) == 1 and s.gpu is None for s in plan)
    assert len({s.cores[0] for s in plan}) == len(plan)  # distinct cores
    assert all(slots.worker_env(s)["CUDA_VISIBLE_DEVICES"] == "" for s in plan)
    assert len(slots.plan(cores_per_worker=len(cores))) == 1
    assert len(slots.plan(workers=3)) == 3  # the user's count wins


def test_fewer_jobs_than_cores_share_the_cores_out(monkeypatch):
    monkeypatch.delenv(slots.PRETEND_GPUS_ENV, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(slots, "available_cores", lambda: list(range(8)))
    monkeypatch.setattr(slots, "available_memory", lambda: 64 << 30)
    assert [s.cores for s in slots.plan(jobs=3)] == [[0, 1], [2, 3], [4, 5]]
    assert [s.cores for s in slots.plan(jobs=1)] == [list(range(8))]
    assert len(slots.plan(jobs=20)) == 8 and all(len(s.cores) == 1 for s in slots.plan(jobs=20))
    monkeypatch.setattr(slots, "available_memory", lambda: 4 << 30)  # room for 2 workers
    assert [len(s.cores) for s in slots.plan(jobs=20)] == [4, 4]


def test_a_free_worker_takes_the_job_of_the_step_it_compiled():
    a = slots.step_key(["layers=mixed3", "octaves=3"])
    b = slots.step_key(["layers=mixed5", "octaves=3"])
    assert a == slots.step_key(["octaves=5", "layers=mixed3", "seed=2"])  # octaves, seed: same step
    assert a != b and slots.step_key(["+recipe=google"]) != slots.step_key([])
    # The 2x2 grid in Hydra's order (layers outer): a3, a5, b3, b5; two workers.
    queue = [(0, a), (1, a), (2, b), (3, b)]
    first = queue.pop(slots.pick(queue, None, set()))
    second = queue.pop(slots.pick(queue, None, {first[-1]}))
    assert (first[-1], second[-1]) == (a, b)  # the second worker starts the other step
    assert queue[slots.pick(queue, a, {b})][-1] == a  # each worker keeps its own step
    assert queue[slots.pick(queue, b, {a})][-1] == b
    assert slots.pick([(0, a)], b, {a}) == 0  # no times seen yet: a job beats idling


def test_a_free_worker_takes_another_workers_step_only_where_that_ends_it_sooner():
    a, b = slots.step_key(["layers=mixed3"]), slots.step_key(["layers=mixed5"])
    # As the bench's 8-job grid at 384 px: a job of b takes 1.6 s on the worker that compiled
    # it; a first job of a step cost 1.2 s more (the trace, on a fresh worker the build too).
    times = slots.JobTimes()
    times.record(a, 2.45, first=True)
    times.record(a, 1.25, first=False)
    times.record(b, 3.1, first=True)
    times.record(b, 1.6, first=False)
    assert times.each(b) == 1.6 and abs(times.compile() - 1.2) < 1e-9
    # The worker of a is free; b's worker is 1.5 s into a job. One b left: stealing it ends
    # at 1.2 + 1.6 = 2.8 s, waiting for b's worker at 0.1 + 1.6 = 1.7 s: it waits.
    busy = [(b, 1.5, False)]
    assert slots.pick([(7, b)], a, {b}, times, busy) is None
    # Two left: b's worker alone ends at 3.3 s, with one stolen at 2.8 s: it takes one.
    assert slots.pick([(6, b), (7, b)], a, {b}, times, busy) == 0
    # b's worker just started its first job of b (trace included): one b left is worth taking.
    assert slots.pick([(7, b)], a, {b}, times, [(b, 0.0, True)]) == 0
    # Its own step and a step nobody holds are taken whatever the times.
    assert slots.pick([(5, b), (6, a)], a, {b}, times, busy) == 1
    assert slots.pick([(5, b), (6, a)], None, {b}, times, busy) == 1

