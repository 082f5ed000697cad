"""Independent jobs and their progress bars: results come back in job order, and a cell shows one bar per job
running at once (relabelled as the next starts) plus one counting finished jobs, not one bar per job."""

from __future__ import annotations

from tinyrlhf.jobs import _Bars, run_jobs


def test_bars_are_reused_by_the_next_job_and_count_what_finished():
    labels = [f"job {i}" for i in range(5)]
    bars = _Bars(labels, True, "jobs finished")
    bars.update(0, 0, 4)
    bars.update(1, 0, 8)  # two jobs at once: two bars
    bars.update(1, 3, 8)
    bars.close(0)
    bars.update(2, 1, 4)  # the third job takes the first job's bar
    assert [b.desc for b in bars.bars] == ["job 2", "job 1"]
    assert (bars.bars[0].n, bars.bars[0].total) == (1, 4)
    bars.close(1)
    bars.close(2)
    bars.close(3)  # a job that never reported (skipped): counted, no bar
    bars.update(4, 2, 2)
    assert len(bars.bars) == 2 and bars.overall.n == 4 and bars.overall.total == 5
    bars.finish()


def test_run_jobs_returns_results_in_order_and_reports_progress():
    seen = []

    def fn(job, report):
        report(1, 2)
        report(2, 2)
        seen.append(job["x"])
        return job["x"] * 10

    results = run_jobs(fn, [{"x": i} for i in range(4)], workers=1, threads=0, labels=[str(i) for i in range(4)],
                       progress=True, failed=lambda job, reason: None, overall="done")
    assert results == [0, 10, 20, 30] and seen == [0, 1, 2, 3]


def test_a_jobs_bar_keeps_a_step_for_the_evaluation_after_training():
    from tinyrlhf.stages import TrainThenEvaluate

    seen = []
    progress = TrainThenEvaluate(lambda done, total: seen.append((done, total)))
    progress(1, 8)
    progress(8, 8)
    assert seen[-1] == (8, 9)  # training done, its evaluation still running
    progress.evaluated()
    assert seen[-1] == (9, 9)
