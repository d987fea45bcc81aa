"""An in-process stand-in for a killed run: the progress reporter raises after a chosen step, and the run
'dies' with whatever it had written to disk."""

from lorakit.training.metrics import SilentReporter


class SimulatedCrash(BaseException):
    """BaseException, so that no `except Exception` in the code under test can swallow the 'kill'."""


class CrashAfterStep(SilentReporter):
    def __init__(self, step: int):
        self.crash_step = step

    def step(self, step: int, metrics: dict) -> None:
        if step == self.crash_step:
            raise SimulatedCrash(step)
