"""The engine's events reach the machine by type, each to its one method, never by name."""

import pytest

from callbackd.events import Digit, dispatch
from callbackd.machine import Callback, Prompt
from vpbx import model

SETTINGS = model.CallbackSettings(enabled=True, list="sales", allowed_prefixes=("+421",))


def machine() -> Callback:
    return Callback("+421233000111", "+421905111222", SETTINGS, "SK", {name: 1.0 for name in Prompt},
                    30.0, 0.0)


@pytest.mark.parametrize("event", ["on_digit", ("on_digit", "5"), None, Digit], ids=repr)
def test_what_is_not_an_event_is_a_type_error(event):
    with pytest.raises(TypeError, match="not an event of the callback machine"):
        dispatch(machine(), event, 0.0)


def test_an_event_goes_to_its_method_of_the_machine():
    callback = machine()
    callback.on_digit = lambda key, now: [("on_digit", key, now)]
    assert dispatch(callback, Digit("7"), 5.0) == [("on_digit", "7", 5.0)]
