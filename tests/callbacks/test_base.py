from epochal.callbacks.base import EVENTS, Callback, handles


class OnlyLogs(Callback):
    def on_log(self, run, step, records):
        return None


class LogsWithoutTheBase:  # a callback that only has the one method it needs
    def on_log(self, run, step, records):
        return None


def test_a_callback_handles_exactly_the_events_its_class_overrides():
    assert [event for event in EVENTS if handles(OnlyLogs(), event)] == ["on_log"]
    assert not any(handles(Callback(), event) for event in EVENTS)


def test_an_object_with_only_some_event_methods_handles_just_those():
    assert [event for event in EVENTS if handles(LogsWithoutTheBase(), event)] == ["on_log"]
