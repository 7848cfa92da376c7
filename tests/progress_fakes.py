"""A progress sink that records what the library reported, for tests of the progress API."""

from components.runtime import progress


class RecordingSink(progress.Sink):
    live = True

    def __init__(self):
        self.events = []

    def stage_started(self, stage, depth):
        self.events.append(("started", stage, depth))

    def stage_finished(self, stage, seconds, headline, depth):
        self.events.append(("finished", stage, headline, depth))

    def stage_failed(self, stage, seconds, error, depth):
        self.events.append(("failed", stage, type(error).__name__, depth))

    def task_started(self, task, description, total, unit):
        self.events.append(("task", description, total, unit))

    def task_progress(self, task, completed, fields):
        self.events.append(("progress", completed, fields))

    def task_finished(self, task):
        self.events.append(("task done",))
