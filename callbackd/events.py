"""What happens to a callback, as the engine tells its machine (callbackd.machine.Callback).

One frozen dataclass per event, each handed to exactly one method of the
machine by `dispatch`. An event the machine has no method for is a type
error where it is made, and a TypeError at `dispatch`, never a method
looked up by name at run time.
"""

from dataclasses import dataclass

from callbackd.machine import Callback, Command


@dataclass(frozen=True)
class Start:
    """The trigger was taken: the call-back is owed."""


@dataclass(frozen=True)
class Restarted:
    """A restarted engine took up the callback from its saved record."""


@dataclass(frozen=True)
class TimerFired:
    name: str


@dataclass(frozen=True)
class EmployeeRinging:
    pass


@dataclass(frozen=True)
class EmployeeAnswered:
    pass


@dataclass(frozen=True)
class EmployeeFailed:
    """The employee's leg was never answered: its final reply's code."""

    code: int


@dataclass(frozen=True)
class EmployeeHangUp:
    pass


@dataclass(frozen=True)
class Digit:
    """A key the employee pressed. A PIN's digits come this way: never logged."""

    key: str


@dataclass(frozen=True)
class ClientRinging:
    pass


@dataclass(frozen=True)
class ClientAnswered:
    pass


@dataclass(frozen=True)
class ClientFailed:
    """The client's leg was never answered: its final reply's code."""

    code: int


@dataclass(frozen=True)
class ClientHangUp:
    pass


@dataclass(frozen=True)
class Abort:
    """The engine stops the callback (shutdown, media failure)."""


Event = (Start | Restarted | TimerFired | EmployeeRinging | EmployeeAnswered | EmployeeFailed
         | EmployeeHangUp | Digit | ClientRinging | ClientAnswered | ClientFailed | ClientHangUp | Abort)


def dispatch(machine: Callback, event: Event, now: float) -> list[Command]:
    """The commands `machine` answers `event` with, at `now` (epoch seconds)."""
    match event:
        case Start():
            return machine.start(now)
        case Restarted():
            return machine.restarted(now)
        case TimerFired(name):
            return machine.on_timer(name, now)
        case EmployeeRinging():
            return machine.on_employee_ringing(now)
        case EmployeeAnswered():
            return machine.on_employee_answered(now)
        case EmployeeFailed(code):
            return machine.on_employee_failed(code, now)
        case EmployeeHangUp():
            return machine.on_employee_hangup(now)
        case Digit(key):
            return machine.on_digit(key, now)
        case ClientRinging():
            return machine.on_client_ringing(now)
        case ClientAnswered():
            return machine.on_client_answered(now)
        case ClientFailed(code):
            return machine.on_client_failed(code, now)
        case ClientHangUp():
            return machine.on_client_hangup(now)
        case Abort():
            return machine.abort(now)
    raise TypeError(f"not an event of the callback machine: {event!r}")
