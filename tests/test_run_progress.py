"""The run's progress line: the time left from the plan's predictions, scaled as the run goes."""

from __future__ import annotations


def test_the_run_eta_scales_the_predictions_by_how_the_run_is_going():
    from types import SimpleNamespace

    from ossbench.run_console import Eta

    now = [0.0]
    pred = lambda t, fits=True: SimpleNamespace(time_s=t, fits=fits)  # noqa: E731
    plan = SimpleNamespace(predictions={"a": pred(10.0), "b": pred(10.0), "c": pred(20.0), "big": pred(99.0, False)})
    eta = Eta(plan, kept={"c"}, clock=lambda: now[0])
    assert eta.seconds() == 20.0  # a and b; c was kept by a resume, big will not run (does not fit)
    now[0] = 20.0  # a took twice its prediction
    eta.finished("a")
    assert eta.seconds() == 20.0 and eta.text() == "~20s left"
    eta.finished("b")
    assert eta.seconds() is None and eta.text() == ""


def test_a_case_skipped_without_running_does_not_speed_up_the_estimate():
    from types import SimpleNamespace

    from ossbench.run_console import Eta

    now = [0.0]
    plan = SimpleNamespace(predictions={k: SimpleNamespace(time_s=10.0, fits=True) for k in "abc"})
    eta = Eta(plan, clock=lambda: now[0])
    eta.finished("a", timed=False)  # skipped at once: no time credited, no time taken
    now[0] = 10.0
    eta.finished("b")
    assert eta.seconds() == 10.0  # b took its prediction: c is predicted as is
    assert Eta(plan, enabled=False).seconds() is None  # a rank's share of a sharded run: no estimate
