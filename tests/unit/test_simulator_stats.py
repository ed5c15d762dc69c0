import pytest

from scheduler.simulator import SimulatorSettings, max_in_window


@pytest.mark.parametrize(
    "times, expected",
    [
        ([], 0),
        ([0.0], 1),
        ([0.0, 0.5, 0.99], 3),
        ([0.0, 0.5, 1.0], 2),  # half-open window: 1.0 is the next second
        ([0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2], 5),
        ([5.0, 0.1, 0.2, 5.5], 2),
    ],
)
def test_most_events_in_any_one_second(times, expected):
    assert max_in_window(times, 1.0) == expected


def test_unknown_settings_are_refused():
    with pytest.raises(ValueError, match="unknown simulator settings: bogus"):
        SimulatorSettings.from_mapping({"bogus": 1})
