"""The callback state machine: one object per callback request, events in, commands out.

Plain Python with no I/O and no clock, so every transition and timer is unit-tested
without a network. The engine owns SIP, media and timers; it feeds each event to
the machine and carries out the commands returned, in order.

Rules of the road:
- `now` is wall-clock epoch seconds (`time.time()`); it only stamps the CDR.
- Timers are named. `StartTimer` (re)starts one: a timer of the same name that is
  still running is replaced. A timer event the machine did not start, or already
  cancelled, is ignored, so a late timer never moves the call.
- An event that makes no sense in the current state returns [] and changes
  nothing; no event raises. A leg answered after the machine cancelled it is the
  engine's to hang up: the machine has moved on.
- `Finished(cdr)` is the last command, exactly once; every later event returns [].
- A DID's PIN is compared here and nowhere else; no command or CDR carries
  what was typed for it.
- Keys at the number prompt: digits, `#` ends the number, `*` clears it, and
  `**` as the whole entry (the second star on an entry a star left empty, no
  digit between) redials at once, no `#` after it: the employee's last client
  on this DID (`last_client`, read by the engine from the state store when the
  call-back starts), checked by the policy like a typed number. A `*` after
  digits only clears them, so a slip and a clear never redial; at the PIN
  prompt `*` only clears.
"""

import enum
import hmac
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from vpbx import model
from vpbx.policy import Allowed, check_destination


class TimerName(enum.StrEnum):
    """Timers by name (str values: the engine may key its handles by them)."""

    DELAY = "delay"  # trigger -> first call to the employee
    EMPLOYEE_RING = "employee_ring"
    RETRY = "retry"
    PROMPT = "prompt"  # the length of "enter the number"
    DIGITS = "digits"  # inter-digit timeout
    MESSAGE = "message"  # the length of an error or failure message, or of the bridged call's warning
    CLIENT_RING = "client_ring"
    # A bridged call's time: first up a minute before its limit (the warning), then at it.
    CALL_TIME = "call_time"


class Prompt(enum.StrEnum):
    """Prompts by name; the engine maps each to a recording in the DID's language."""

    ENTER_NUMBER = "enter_number"
    INVALID_NUMBER = "invalid_number"
    NOT_ALLOWED = "not_allowed"
    CLIENT_BUSY = "client_busy"
    CLIENT_NO_ANSWER = "client_no_answer"
    CLIENT_FAILED = "client_failed"
    ENTER_PIN = "enter_pin"
    WRONG_PIN = "wrong_pin"  # says "wrong" and asks again: keys may barge in, as into enter_pin
    CALL_ENDING = "call_ending"  # a minute before a bridged call's limit


# Keys of RFC 4733 / SIP INFO digit events that mean something here.
NUMBER_KEYS = frozenset("0123456789")
CLEAR_KEY = "*"
END_KEY = "#"
KEYS = NUMBER_KEYS | {CLEAR_KEY, END_KEY}
# What a redial's CDR says the employee typed.
REDIAL_KEYS = CLEAR_KEY * 2

# Final replies from the client's side, by what the employee is told. 603 is a
# person declining the call, like busy, not a fault of the PBX. Tuples, not sets:
# a garbage code must compare unequal, not fail to hash.
CLIENT_BUSY_CODES = (486, 600, 603)
CLIENT_NO_ANSWER_CODES = (408, 480, 487)
# Final replies from the employee's mobile by the cause `retry_on` names
# (model.RETRY_CAUSES); any other code is "failed", the ring timeout "no_answer".
EMPLOYEE_CAUSES = {408: "no_answer", 480: "no_answer", 487: "no_answer",
                   486: "busy", 600: "busy", 603: "declined"}
# Wrong PINs before the call-back is ended: enough for a slip of the finger,
# too few for guessing (and each guess costs a call-back, which is counted).
PIN_TRIES = 3
# A PIN is at most model.MAX_PIN_DIGITS; more keys without "#" are a wrong try.
PIN_MAX_KEYS = 16
# The warning plays this long before a bridged call's limit.
CALL_WARNING_S = 60.0

# What a CDR's `result` and `ended_by` may say.
RESULTS = ("bridged", "employee_no_answer", "no_digits", "denied", "pin_refused", "client_busy",
           "client_no_answer", "failed")
ENDED_BY = ("employee", "client", "engine", "limit", "engine_restart")


class State(enum.StrEnum):
    NEW = "new"
    WAITING = "waiting"  # the "delay" after the trigger
    CALLING_EMPLOYEE = "calling_employee"
    RETRY_WAIT = "retry_wait"
    PIN_PROMPTING = "pin_prompting"  # "enter your PIN" (or "wrong PIN") plays; a key stops it
    PIN_COLLECTING = "pin_collecting"
    PROMPTING = "prompting"  # "enter the number" plays; a key stops it
    COLLECTING = "collecting"
    ERROR_MESSAGE = "error_message"  # invalid/not allowed plays, then prompt again or give up
    DIALING_CLIENT = "dialing_client"  # the employee hears ringback
    GOODBYE = "goodbye"  # the client was not reached: a message, then hang up
    BRIDGED = "bridged"
    DONE = "done"


@dataclass(frozen=True)
class StartTimer:
    name: str
    seconds: float


@dataclass(frozen=True)
class CancelTimer:
    name: str


@dataclass(frozen=True)
class CallEmployee:
    attempt: int
    ring_timeout: float


@dataclass(frozen=True)
class CancelEmployee:
    """CANCEL the employee's unanswered INVITE."""


@dataclass(frozen=True)
class HangUpEmployee:
    """BYE to the employee's answered leg."""


@dataclass(frozen=True)
class PlayPrompt:
    """Play to the employee, replacing whatever plays."""

    name: str


@dataclass(frozen=True)
class StopPrompt:
    """Stop the prompt or ringback the employee hears."""


@dataclass(frozen=True)
class PlayRingback:
    pass


@dataclass(frozen=True)
class DialClient:
    e164: str
    dialled: str


@dataclass(frozen=True)
class CancelClient:
    """CANCEL the client's unanswered INVITE."""


@dataclass(frozen=True)
class HangUpClient:
    """BYE to the client's answered leg."""


@dataclass(frozen=True)
class MuteClient:
    """The employee stops hearing the client, so that a prompt played over the bridge is heard alone."""


@dataclass(frozen=True)
class UnmuteClient:
    """The employee hears the client again."""


@dataclass(frozen=True)
class Bridge:
    """Connect the employee's and the client's media (recording per the DID's settings)."""


@dataclass
class Cdr:
    """One record per callback; timestamps are epoch seconds, None when it never happened."""

    did: str
    employee: str
    trigger_at: float
    id: str | None = None  # the callback's: a restarted engine writes no CDR twice
    client_dialled: str | None = None
    client_e164: str | None = None
    employee_answer_at: float | None = None
    client_answer_at: float | None = None
    end_at: float | None = None
    result: str | None = None
    bridged_seconds: float = 0.0
    recording: str | None = None  # the engine fills it: the machine knows no files
    employee_attempts: int = 0
    # "employee", "client", "engine", "limit" (max_call_minutes) or "engine_restart"
    # (the engine restarted while the employee was being asked for digits)
    ended_by: str | None = None
    # The number tried last was the employee's last client, asked for with `**`.
    redial: bool = False

    def to_json_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("trigger_at", "employee_answer_at", "client_answer_at", "end_at"):
            out[key] = _iso(out[key])
        return out


@dataclass(frozen=True)
class Finished:
    cdr: Cdr


Command = (StartTimer | CancelTimer | CallEmployee | CancelEmployee | HangUpEmployee | PlayPrompt
           | StopPrompt | PlayRingback | DialClient | CancelClient | HangUpClient | Bridge | MuteClient
           | UnmuteClient | Finished)


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


class Callback:
    """One callback request, from the trigger to the CDR."""

    def __init__(
        self,
        did: str,
        employee: str,
        settings: model.CallbackSettings,
        country: str,
        prompt_seconds: Mapping[str, float],
        client_ring_timeout: float,
        now: float,
        last_client: str | None = None,
    ):
        """`last_client`: the E.164 number `employee` last called through `did`, what `**` dials."""
        missing = [name for name in Prompt if name not in prompt_seconds]
        if missing:
            raise ValueError(f"prompt_seconds lacks {', '.join(missing)}")
        self.settings = settings
        self.country = country
        self.prompt_seconds = dict(prompt_seconds)
        self.client_ring_timeout = client_ring_timeout
        self.last_client = last_client
        self.cdr = Cdr(did=did, employee=employee, trigger_at=now)
        self.state = State.NEW
        self._timers: set[str] = set()
        self._digits = ""
        self._star_on_empty = False  # the entry so far is one star: a second one redials
        self._keys_pressed = False  # any key at all: a person, not a voicemail
        self._failed_numbers = 0
        self._pin_accepted = settings.pin is None
        self._wrong_pins = 0
        self._warned = False  # the bridged call's one-minute warning has played
        self._result: str | None = None  # decided before the goodbye message plays

    # --- what survives the engine ---------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """What a restarted engine needs to go on with this callback (JSON-able).

        Digits typed for a PIN are not in it: they are secret, and a restart
        ends the digits stage anyway (`restarted`).
        """
        number_digits = self.state in (State.PROMPTING, State.COLLECTING)
        return {
            "state": self.state.value,
            "cdr": asdict(self.cdr),
            "timers": sorted(self._timers),
            "digits": self._digits if number_digits else "",
            "keys_pressed": self._keys_pressed,
            "failed_numbers": self._failed_numbers,
            "pin_accepted": self._pin_accepted,
            "wrong_pins": self._wrong_pins,
            "warned": self._warned,
            "result": self._result,
        }

    def restore(self, snapshot: Mapping[str, Any]) -> None:
        """Take up a `snapshot` of an earlier engine; then `restarted()` says what to do."""
        self.state = State(snapshot["state"])
        self.cdr = Cdr(**snapshot["cdr"])
        self._timers = set(snapshot["timers"])
        self._digits = snapshot["digits"]
        self._keys_pressed = snapshot["keys_pressed"]
        self._failed_numbers = snapshot["failed_numbers"]
        self._pin_accepted = snapshot["pin_accepted"] or self.settings.pin is None
        self._wrong_pins = snapshot["wrong_pins"]
        self._warned = snapshot["warned"]
        self._result = snapshot["result"]

    def restarted(self, now: float) -> list[Command]:
        """The engine came back with this callback restored; its timers run on.

        Owed (before or between the calls to the employee) and bridged callbacks
        go on. A call to the employee left ringing is placed again, the old one
        cancelled. The digits stage is ended on both legs: the prompt and the
        keys typed into a dead engine are lost, and asking again from the middle
        would confuse the employee more than a call-back that ends.
        """
        match self.state:
            case State.NEW:
                return self.start(now)
            case State.CALLING_EMPLOYEE:
                self.cdr.employee_attempts -= 1
                return [CancelEmployee(), *self._cancel(TimerName.EMPLOYEE_RING), *self._call_employee()]
            case State.DIALING_CLIENT:
                return self._finish(now, "failed", "engine_restart", CancelClient(), HangUpEmployee())
            case (State.PIN_PROMPTING | State.PIN_COLLECTING | State.PROMPTING | State.COLLECTING
                  | State.ERROR_MESSAGE):
                return self._finish(now, "no_digits" if not self._failed_numbers else "denied",
                                    "engine_restart", HangUpEmployee())
            case State.GOODBYE:
                return self._finish(now, self._result, "engine_restart", HangUpEmployee())
        return []

    # --- events -----------------------------------------------------------

    def start(self, now: float) -> list[Command]:
        if self.state is not State.NEW:
            return []
        self.state = State.WAITING
        return [self._start(TimerName.DELAY, self.settings.delay)]

    def on_timer(self, name: str, now: float) -> list[Command]:
        if not isinstance(name, str) or name not in self._timers:
            return []  # not ours, or cancelled while its event was on the way
        self._timers.discard(name)
        match (self.state, name):
            case (State.WAITING, TimerName.DELAY) | (State.RETRY_WAIT, TimerName.RETRY):
                return self._call_employee()
            case (State.CALLING_EMPLOYEE, TimerName.EMPLOYEE_RING):
                return [CancelEmployee(), *self._employee_not_reached(now, "no_answer")]
            case (State.PROMPTING, TimerName.PROMPT):
                self.state = State.COLLECTING
                return [self._start(TimerName.DIGITS, self.settings.inter_digit_timeout)]
            case (State.PIN_PROMPTING, TimerName.PROMPT):
                self.state = State.PIN_COLLECTING
                return [self._start(TimerName.DIGITS, self.settings.inter_digit_timeout)]
            case (State.COLLECTING | State.PIN_COLLECTING, TimerName.DIGITS):
                if not self._keys_pressed:
                    # Nobody typed anything since the answer: a voicemail took the call.
                    return self._finish(now, "no_digits", "engine", HangUpEmployee())
                return self._evaluate(now)
            case (State.ERROR_MESSAGE, TimerName.MESSAGE):
                if self._failed_numbers >= self.settings.attempts:
                    return self._finish(now, "denied", "engine", HangUpEmployee())
                return self._prompt()
            case (State.DIALING_CLIENT, TimerName.CLIENT_RING):
                return [CancelClient(), *self._goodbye("client_no_answer", Prompt.CLIENT_NO_ANSWER)]
            case (State.GOODBYE, TimerName.MESSAGE):
                return self._finish(now, self._result, "engine", HangUpEmployee())
            case (State.BRIDGED, TimerName.CALL_TIME) if not self._warned:
                self._warned = True
                # The client goes on hearing the employee; only the employee hears the warning.
                return [MuteClient(), PlayPrompt(Prompt.CALL_ENDING),
                        self._start(TimerName.MESSAGE, self.prompt_seconds[Prompt.CALL_ENDING]),
                        self._start(TimerName.CALL_TIME, CALL_WARNING_S)]
            case (State.BRIDGED, TimerName.MESSAGE):
                return [UnmuteClient()]
            case (State.BRIDGED, TimerName.CALL_TIME):
                return self._finish(now, "bridged", "limit", HangUpClient(), HangUpEmployee())
        return []

    def on_employee_ringing(self, now: float) -> list[Command]:
        return []

    def on_employee_answered(self, now: float) -> list[Command]:
        if self.state is not State.CALLING_EMPLOYEE:
            return []
        self.cdr.employee_answer_at = now
        return [*self._cancel(TimerName.EMPLOYEE_RING), *self._prompt()]

    def on_employee_failed(self, code: int, now: float) -> list[Command]:
        if self.state is not State.CALLING_EMPLOYEE:
            return []
        cause = EMPLOYEE_CAUSES.get(code, "failed") if isinstance(code, int) else "failed"
        return [*self._cancel(TimerName.EMPLOYEE_RING), *self._employee_not_reached(now, cause)]

    def on_employee_hangup(self, now: float) -> list[Command]:
        if self.state in (State.PIN_PROMPTING, State.PIN_COLLECTING):
            return self._finish(now, "pin_refused" if self._wrong_pins else "no_digits", "employee")
        if self.state in (State.PROMPTING, State.COLLECTING, State.ERROR_MESSAGE):
            # No number was accepted; a refused one makes it a denied callback.
            return self._finish(now, "denied" if self._failed_numbers else "no_digits", "employee")
        if self.state is State.DIALING_CLIENT:
            return self._finish(now, "failed", "employee", CancelClient())
        if self.state is State.GOODBYE:
            return self._finish(now, self._result, "employee")
        if self.state is State.BRIDGED:
            return self._finish(now, "bridged", "employee", HangUpClient())
        return []

    def on_digit(self, digit: str, now: float) -> list[Command]:
        collecting = {State.PROMPTING: State.COLLECTING, State.COLLECTING: State.COLLECTING,
                      State.PIN_PROMPTING: State.PIN_COLLECTING, State.PIN_COLLECTING: State.PIN_COLLECTING}
        if self.state not in collecting:
            return []  # keys during a message or ringback are dropped; the next prompt asks again
        if not isinstance(digit, str) or digit not in KEYS:
            return []
        self._keys_pressed = True
        out: list[Command] = []
        if self.state in (State.PROMPTING, State.PIN_PROMPTING):
            out += [StopPrompt(), *self._cancel(TimerName.PROMPT)]
            self.state = collecting[self.state]
        if digit == END_KEY:
            return out + self._evaluate(now)
        if digit == CLEAR_KEY:
            if self._star_on_empty and self.state is State.COLLECTING:
                return out + self._evaluate(now, redial=True)
            self._star_on_empty = not self._digits
            self._digits = ""
        else:
            self._star_on_empty = False
            self._digits += digit
            most = PIN_MAX_KEYS if self.state is State.PIN_COLLECTING else self.settings.max_digits
            if len(self._digits) >= most:
                return out + self._evaluate(now)
        return [*out, self._start(TimerName.DIGITS, self.settings.inter_digit_timeout)]

    def on_client_ringing(self, now: float) -> list[Command]:
        return []

    def on_client_answered(self, now: float) -> list[Command]:
        if self.state is not State.DIALING_CLIENT:
            return []
        self.cdr.client_answer_at = now
        self.state = State.BRIDGED
        first = self.settings.max_call_minutes * 60 - CALL_WARNING_S
        return [*self._cancel(TimerName.CLIENT_RING), StopPrompt(), Bridge(),
                self._start(TimerName.CALL_TIME, first)]

    def on_client_failed(self, code: int, now: float) -> list[Command]:
        if self.state is not State.DIALING_CLIENT:
            return []
        out = self._cancel(TimerName.CLIENT_RING)
        if code in CLIENT_BUSY_CODES:
            return out + self._goodbye("client_busy", Prompt.CLIENT_BUSY)
        if code in CLIENT_NO_ANSWER_CODES:
            return out + self._goodbye("client_no_answer", Prompt.CLIENT_NO_ANSWER)
        return out + self._goodbye("failed", Prompt.CLIENT_FAILED)

    def on_client_hangup(self, now: float) -> list[Command]:
        if self.state is not State.BRIDGED:
            return []
        return self._finish(now, "bridged", "client", HangUpEmployee())

    def abort(self, now: float) -> list[Command]:
        """The engine stops (shutdown, media failure): release every leg, write the CDR."""
        legs: dict[State, tuple[Command, ...]] = {
            State.CALLING_EMPLOYEE: (CancelEmployee(),),
            State.PIN_PROMPTING: (HangUpEmployee(),),
            State.PIN_COLLECTING: (HangUpEmployee(),),
            State.PROMPTING: (HangUpEmployee(),),
            State.COLLECTING: (HangUpEmployee(),),
            State.ERROR_MESSAGE: (HangUpEmployee(),),
            State.DIALING_CLIENT: (CancelClient(), HangUpEmployee()),
            State.GOODBYE: (HangUpEmployee(),),
            State.BRIDGED: (HangUpClient(), HangUpEmployee()),
        }
        if self.state is State.DONE:
            return []
        result = "bridged" if self.state is State.BRIDGED else "failed"
        return self._finish(now, result, "engine", *legs.get(self.state, ()))

    # --- steps ------------------------------------------------------------

    def _start(self, name: str, seconds: float) -> StartTimer:
        self._timers.add(name)
        return StartTimer(name, seconds)

    def _cancel(self, name: str) -> list[Command]:
        if name not in self._timers:
            return []
        self._timers.discard(name)
        return [CancelTimer(name)]

    def _call_employee(self) -> list[Command]:
        self.cdr.employee_attempts += 1
        self.state = State.CALLING_EMPLOYEE
        timeout = self.settings.ring_timeout
        return [CallEmployee(self.cdr.employee_attempts, timeout),
                self._start(TimerName.EMPLOYEE_RING, timeout)]

    def _employee_not_reached(self, now: float, cause: str) -> list[Command]:
        """`cause`: a word of model.RETRY_CAUSES; only those of the DID's retry_on are tried again."""
        if self.cdr.employee_attempts > self.settings.retries or cause not in self.settings.retry_on:
            return self._finish(now, "employee_no_answer", "engine")
        self.state = State.RETRY_WAIT
        return [self._start(TimerName.RETRY, self.settings.retry_interval)]

    def _prompt(self, prompt: str | None = None) -> list[Command]:
        """Ask for the PIN until it was typed right, then for the client's number."""
        self._digits = ""
        self._star_on_empty = False
        if self._pin_accepted:
            self.state = State.PROMPTING
            prompt = Prompt.ENTER_NUMBER
        else:
            self.state = State.PIN_PROMPTING
            prompt = prompt or Prompt.ENTER_PIN
        return [PlayPrompt(prompt), self._start(TimerName.PROMPT, self.prompt_seconds[prompt])]

    def _evaluate(self, now: float, redial: bool = False) -> list[Command]:
        """What was typed is complete: the PIN, or the number to dial if the policy allows.

        `redial`: the number is the last client's, which the policy checks again
        as if typed (with "00" for its "+"): a number denied since it was dialled
        is refused. No last client is an invalid number.
        """
        if self.state is State.PIN_COLLECTING:
            return self._check_pin(now)
        out = self._cancel(TimerName.DIGITS)
        s = self.settings
        typed = self._digits
        if redial:
            typed = REDIAL_KEYS
            number = "00" + self.last_client.removeprefix("+") if self.last_client else ""
        else:
            number = typed
        verdict = check_destination(number, self.country, s.allowed_prefixes, s.denied_types)
        self.cdr.client_dialled = typed
        self.cdr.client_e164 = verdict.e164
        self.cdr.redial = redial
        self._digits = ""
        self._star_on_empty = False
        if isinstance(verdict, Allowed):
            self.state = State.DIALING_CLIENT
            # The INVITE first: ringback a few ms late goes unheard, the
            # client's phone ringing later does not.
            return [
                *out,
                DialClient(verdict.e164, self.cdr.client_dialled),
                PlayRingback(),
                self._start(TimerName.CLIENT_RING, self.client_ring_timeout),
            ]
        self._failed_numbers += 1
        self.state = State.ERROR_MESSAGE
        prompt = Prompt.INVALID_NUMBER if verdict.reason == "invalid" else Prompt.NOT_ALLOWED
        return [*out, PlayPrompt(prompt), self._start(TimerName.MESSAGE, self.prompt_seconds[prompt])]

    def _check_pin(self, now: float) -> list[Command]:
        typed, self._digits = self._digits, ""
        # Constant time: how long a refusal takes says nothing about the digits.
        if hmac.compare_digest(typed.encode(), self.settings.pin.encode()):
            self._pin_accepted = True
            return [*self._cancel(TimerName.DIGITS), *self._prompt()]
        self._wrong_pins += 1
        if self._wrong_pins >= PIN_TRIES:
            return self._finish(now, "pin_refused", "engine", HangUpEmployee())
        return [*self._cancel(TimerName.DIGITS), *self._prompt(Prompt.WRONG_PIN)]

    def _goodbye(self, result: str, prompt: str) -> list[Command]:
        self._result = result
        self.state = State.GOODBYE
        return [StopPrompt(), PlayPrompt(prompt), self._start(TimerName.MESSAGE, self.prompt_seconds[prompt])]

    def _finish(self, now: float, result: str | None, ended_by: str, *legs: Command) -> list[Command]:
        cancels = [CancelTimer(name) for name in sorted(self._timers)]
        self._timers.clear()
        self.cdr.end_at = now
        self.cdr.result = result
        self.cdr.ended_by = ended_by
        if self.cdr.client_answer_at is not None:
            self.cdr.bridged_seconds = round(max(0.0, now - self.cdr.client_answer_at), 3)
        self.state = State.DONE
        return [*cancels, *legs, Finished(self.cdr)]
