"""The callback state machine, told as the stories of calls: events in, commands out."""

import pytest

from callbackd.events import (
    Abort,
    ClientAnswered,
    ClientFailed,
    ClientHangUp,
    ClientRinging,
    Digit,
    EmployeeAnswered,
    EmployeeFailed,
    EmployeeHangUp,
    EmployeeRinging,
    Event,
    Restarted,
    Start,
    TimerFired,
    dispatch,
)
from callbackd.machine import (
    Bridge,
    Callback,
    CallEmployee,
    CancelClient,
    CancelEmployee,
    CancelTimer,
    Cdr,
    DialClient,
    Finished,
    HangUpClient,
    HangUpEmployee,
    MuteClient,
    PlayPrompt,
    PlayRingback,
    StartTimer,
    State,
    StopPrompt,
    UnmuteClient,
)
from vpbx import model

DID = "+421233000111"
EMPLOYEE = "+421905111222"
CLIENT_TYPED = "0905123456"
CLIENT = "+421905123456"
PREMIUM_TYPED = "0900123456"
T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
CLIENT_RING_TIMEOUT = 30.0
PROMPT_SECONDS = {
    "enter_number": 4.0,
    "invalid_number": 2.0,
    "not_allowed": 2.5,
    "client_busy": 3.0,
    "client_no_answer": 3.5,
    "client_failed": 2.25,
    "enter_pin": 3.0,
    "wrong_pin": 3.25,
    "call_ending": 2.75,
}


class Story:
    """One callback driven event by event, with a clock and the timers the machine started.

    `fire(name)` lets a running timer expire: the clock moves on by its seconds, and a
    timer the machine never started cannot fire, so the story checks timer discipline.
    """

    def __init__(self, last_client: str | None = None, **settings):
        settings.setdefault("allowed_prefixes", ("+421",))
        self.settings = model.CallbackSettings(enabled=True, list="sales-mobiles", **settings)
        self.now = T0
        self.machine = Callback(
            DID, EMPLOYEE, self.settings, "SK", PROMPT_SECONDS, CLIENT_RING_TIMEOUT, now=T0,
            last_client=last_client,
        )
        self.said: list = []
        self.timers: dict[str, float] = {}

    def __call__(self, event: Event, after: float = 0.0) -> list:
        self.now += after
        out = dispatch(self.machine, event, self.now)
        for command in out:
            if isinstance(command, StartTimer):
                self.timers[command.name] = command.seconds
            elif isinstance(command, CancelTimer):
                assert self.timers.pop(command.name, None) is not None, f"{command} was not running"
        self.said += out
        return out

    def fire(self, name: str) -> list:
        assert name in self.timers, f"timer {name!r} is not running (running: {sorted(self.timers)})"
        return self(TimerFired(name), after=self.timers.pop(name))

    def type(self, keys: str, gap: float = 0.5) -> list:
        out = []
        for key in keys:
            out += self(Digit(key), after=gap)
        return out

    @property
    def finished(self) -> list[Finished]:
        return [c for c in self.said if isinstance(c, Finished)]

    @property
    def cdr(self) -> Cdr:
        (done,) = self.finished
        return done.cdr

    def dialled(self) -> list[DialClient]:
        return [c for c in self.said if isinstance(c, DialClient)]


def waiting(**settings) -> Story:
    story = Story(**settings)
    story(Start())
    return story


def ringing(**settings) -> Story:
    story = waiting(**settings)
    story.fire("delay")
    return story


def answered(**settings) -> Story:
    story = ringing(**settings)
    story(EmployeeAnswered(), after=3.0)
    return story


def collecting(**settings) -> Story:
    story = answered(**settings)
    story.fire("prompt")
    return story


def refused_once(**settings) -> Story:
    story = answered(**settings)
    story.type(PREMIUM_TYPED + "#")
    return story


def dialing(**settings) -> Story:
    story = answered(**settings)
    story.type(CLIENT_TYPED + "#")
    return story


def bridged(**settings) -> Story:
    story = dialing(**settings)
    story(ClientAnswered(), after=6.0)
    return story


def goodbye(**settings) -> Story:
    story = dialing(**settings)
    story(ClientFailed(486), after=4.0)
    return story


# --- the happy path ---------------------------------------------------------------


def test_the_happy_path_says_exactly_these_commands_in_order():
    story = Story()
    assert story(Start()) == [StartTimer("delay", 1.0)]
    assert story.fire("delay") == [CallEmployee(1, 20), StartTimer("employee_ring", 20)]
    assert story(EmployeeRinging(), after=0.5) == []
    assert story(EmployeeAnswered(), after=4.0) == [
        CancelTimer("employee_ring"),
        PlayPrompt("enter_number"),
        StartTimer("prompt", 4.0),
    ]
    assert story(Digit("0"), after=1.0) == [StopPrompt(), CancelTimer("prompt"), StartTimer("digits", 5)]
    assert story.type("905123456") == [StartTimer("digits", 5)] * 9
    assert story(Digit("#"), after=0.5) == [
        CancelTimer("digits"),
        DialClient(CLIENT, CLIENT_TYPED),
        PlayRingback(),
        StartTimer("client_ring", CLIENT_RING_TIMEOUT),
    ]
    assert story(ClientRinging(), after=1.0) == []
    assert story(ClientAnswered(), after=7.0) == [
        CancelTimer("client_ring"), StopPrompt(), Bridge(), StartTimer("call_time", 3540.0),
    ]
    out = story(ClientHangUp(), after=62.5)
    assert out[:-1] == [CancelTimer("call_time"), HangUpEmployee()]
    assert out[-1] == Finished(story.cdr)
    assert story.timers == {}


def test_the_happy_path_writes_a_cdr_of_the_whole_story():
    story = bridged()
    answered_at = story.now
    story(ClientHangUp(), after=62.5)
    assert story.cdr == Cdr(
        did=DID,
        employee=EMPLOYEE,
        trigger_at=T0,
        client_dialled=CLIENT_TYPED,
        client_e164=CLIENT,
        employee_answer_at=T0 + 1.0 + 3.0,
        client_answer_at=answered_at,
        end_at=answered_at + 62.5,
        result="bridged",
        bridged_seconds=62.5,
        recording=None,
        employee_attempts=1,
        ended_by="client",
    )


def test_the_state_follows_the_call():
    story = Story()
    seen = [story.machine.state]
    story(Start())
    seen.append(story.machine.state)
    story.fire("delay")
    seen.append(story.machine.state)
    story(EmployeeAnswered())
    seen.append(story.machine.state)
    story.fire("prompt")
    seen.append(story.machine.state)
    story.type(CLIENT_TYPED + "#")
    seen.append(story.machine.state)
    story(ClientAnswered())
    seen.append(story.machine.state)
    story(EmployeeHangUp())
    seen.append(story.machine.state)
    assert seen == [
        State.NEW, State.WAITING, State.CALLING_EMPLOYEE, State.PROMPTING, State.COLLECTING,
        State.DIALING_CLIENT, State.BRIDGED, State.DONE,
    ]
    assert [str(s) for s in seen][:2] == ["new", "waiting"]


# --- calling the employee back ------------------------------------------------------


def test_start_waits_the_dids_delay_before_calling_back():
    assert Story(delay=2.5)(Start()) == [StartTimer("delay", 2.5)]


def test_start_twice_starts_once():
    story = Story()
    story(Start())
    assert story(Start()) == []


def test_the_delay_calls_the_employee_with_the_dids_ring_timeout():
    story = Story(ring_timeout=35)
    story(Start())
    assert story.fire("delay") == [CallEmployee(1, 35), StartTimer("employee_ring", 35)]


def test_an_employee_who_does_not_answer_is_cancelled_at_the_ring_timeout_and_tried_again_later():
    story = ringing(retry_interval=45)
    assert story.fire("employee_ring") == [CancelEmployee(), StartTimer("retry", 45)]
    assert story.machine.state is State.RETRY_WAIT
    assert story.fire("retry") == [CallEmployee(2, 20), StartTimer("employee_ring", 20)]


def test_a_busy_employee_is_tried_again_after_the_retry_interval():
    story = ringing()
    out = story(EmployeeFailed(486), after=2.0)
    assert out == [CancelTimer("employee_ring"), StartTimer("retry", 30)]
    assert story.fire("retry") == [CallEmployee(2, 20), StartTimer("employee_ring", 20)]


@pytest.mark.parametrize("code", [408, 480, 486, 487, 600])
def test_no_answer_and_busy_are_retried_by_default(code):
    story = ringing()
    assert story(EmployeeFailed(code))[-1] == StartTimer("retry", 30)


def test_an_employee_who_declined_is_not_called_again_by_default():
    story = ringing()
    out = story(EmployeeFailed(603), after=2.0)
    assert out == [CancelTimer("employee_ring"), Finished(story.cdr)]
    assert story.cdr.result == "employee_no_answer"
    assert story.cdr.employee_attempts == 1
    assert [c for c in story.said if isinstance(c, CallEmployee)] == [CallEmployee(1, 20)]


@pytest.mark.parametrize("code", [404, 500, 503, 999, None, "486"])
def test_other_failures_of_the_employee_leg_are_not_retried_by_default(code):
    story = ringing()
    assert story(EmployeeFailed(code))[-1] == Finished(story.cdr)
    assert story.cdr.employee_attempts == 1


@pytest.mark.parametrize(
    ("retry_on", "code", "retried"),
    [
        (("busy",), 486, True),
        (("busy",), 480, False),
        (("no_answer",), 486, False),
        (("no_answer",), 408, True),
        (("declined",), 603, True),
        (("failed",), 503, True),
        (("failed",), 603, False),
        ((), 480, False),
    ],
)
def test_the_dids_retry_on_says_which_failures_are_tried_again(retry_on, code, retried):
    story = ringing(retry_on=retry_on)
    last = story(EmployeeFailed(code))[-1]
    assert (last == StartTimer("retry", 30)) is retried
    assert isinstance(last, Finished) is not retried


def test_the_ring_timeout_is_a_no_answer_for_retry_on():
    assert ringing(retry_on=("busy",)).fire("employee_ring")[-1].__class__ is Finished
    assert ringing(retry_on=("no_answer",)).fire("employee_ring")[-1] == StartTimer("retry", 30)


def test_a_busy_employee_is_not_retried_when_retry_on_leaves_busy_out():
    story = ringing(retry_on=("no_answer",), retries=3)
    story(EmployeeFailed(486))
    assert story.cdr.employee_attempts == 1
    assert "retry" not in story.timers


def test_after_the_last_retry_the_callback_ends_as_employee_no_answer():
    story = ringing()  # one retry by default
    story.fire("employee_ring")
    story.fire("retry")
    out = story(EmployeeFailed(480), after=20.0)
    assert out == [CancelTimer("employee_ring"), Finished(story.cdr)]
    assert story.cdr.result == "employee_no_answer"
    assert story.cdr.employee_attempts == 2
    assert story.cdr.ended_by == "engine"
    assert story.cdr.employee_answer_at is None
    assert story.cdr.end_at == story.now


def test_the_last_ring_timeout_cancels_the_employee_and_ends():
    story = ringing(retries=0)
    story.fire("employee_ring")
    assert story.said[-2:] == [CancelEmployee(), Finished(story.cdr)]
    assert story.cdr.result == "employee_no_answer"


def test_every_retry_is_numbered():
    story = ringing(retries=2)
    for _ in range(2):
        story(EmployeeFailed(486))
        story.fire("retry")
    story(EmployeeFailed(486))
    assert [c.attempt for c in story.said if isinstance(c, CallEmployee)] == [1, 2, 3]
    assert story.cdr.employee_attempts == 3


def test_an_employee_answering_a_retry_gets_the_prompt():
    story = ringing()
    story.fire("employee_ring")
    story.fire("retry")
    assert story(EmployeeAnswered())[1:] == [PlayPrompt("enter_number"), StartTimer("prompt", 4.0)]


# --- collecting the number ----------------------------------------------------------


def test_the_answered_employee_hears_the_prompt_and_the_answer_is_stamped():
    story = ringing()
    assert story(EmployeeAnswered(), after=3.0) == [
        CancelTimer("employee_ring"),
        PlayPrompt("enter_number"),
        StartTimer("prompt", 4.0),
    ]
    assert story.machine.cdr.employee_answer_at == T0 + 1.0 + 3.0


def test_when_the_prompt_ends_the_inter_digit_timer_starts():
    story = answered(inter_digit_timeout=7)
    assert story.fire("prompt") == [StartTimer("digits", 7)]


def test_a_key_during_the_prompt_stops_the_prompt():
    story = answered()
    assert story(Digit("0"), after=1.0) == [StopPrompt(), CancelTimer("prompt"), StartTimer("digits", 5)]
    assert story.machine.state is State.COLLECTING


def test_each_digit_restarts_the_inter_digit_timer():
    story = collecting()
    assert story.type("09") == [StartTimer("digits", 5), StartTimer("digits", 5)]


def test_hash_ends_the_number():
    story = collecting()
    story.type(CLIENT_TYPED)
    assert story(Digit("#"))[:3] == [CancelTimer("digits"), DialClient(CLIENT, CLIENT_TYPED),
                                          PlayRingback()]
    assert story.dialled() == [DialClient(CLIENT, CLIENT_TYPED)]


def test_the_inter_digit_timeout_ends_the_number():
    story = collecting()
    story.type(CLIENT_TYPED)
    assert story.fire("digits") == [
        DialClient(CLIENT, CLIENT_TYPED),
        PlayRingback(),
        StartTimer("client_ring", CLIENT_RING_TIMEOUT),
    ]


def test_star_clears_the_digits_typed_so_far():
    story = collecting()
    story.type("0911*")
    story.type(CLIENT_TYPED + "#")
    assert story.dialled() == [DialClient(CLIENT, CLIENT_TYPED)]


def test_star_restarts_the_inter_digit_timer():
    story = collecting()
    assert story.type("0*") == [StartTimer("digits", 5)] * 2


def test_the_number_ends_by_itself_at_max_digits():
    story = collecting(max_digits=10)
    out = story.type(CLIENT_TYPED)
    assert out[-3:] == [DialClient(CLIENT, CLIENT_TYPED), PlayRingback(), StartTimer("client_ring", 30.0)]
    assert story(Digit("#")) == []  # the number is already taken


def test_fifteen_digits_are_the_most_a_number_can_have():
    story = collecting()
    out = story.type("0" * 15)
    assert out[-3:] == [CancelTimer("digits"), PlayPrompt("invalid_number"), StartTimer("message", 2.0)]
    assert story.machine.cdr.client_dialled == "0" * 15


def test_a_voicemail_that_never_types_is_hung_up_and_no_client_is_dialled():
    story = collecting()
    out = story.fire("digits")
    assert out == [HangUpEmployee(), Finished(story.cdr)]
    assert story.cdr.result == "no_digits"
    assert story.cdr.ended_by == "engine"
    assert story.cdr.client_dialled is None
    assert story.dialled() == []


def test_hash_alone_is_an_invalid_number():
    story = collecting()
    assert story(Digit("#")) == [
        CancelTimer("digits"),
        PlayPrompt("invalid_number"),
        StartTimer("message", 2.0),
    ]


def test_silence_after_a_refused_number_is_another_failed_attempt_not_a_voicemail():
    story = refused_once()
    story.fire("message")
    story.fire("prompt")
    assert story.fire("digits") == [PlayPrompt("invalid_number"), StartTimer("message", 2.0)]


# --- the destination policy ---------------------------------------------------------


def test_an_invalid_number_is_told_and_the_prompt_repeats():
    story = collecting()
    assert story.type("0905#")[-2:] == [PlayPrompt("invalid_number"), StartTimer("message", 2.0)]
    assert story.machine.state is State.ERROR_MESSAGE
    assert story.fire("message") == [PlayPrompt("enter_number"), StartTimer("prompt", 4.0)]
    assert story.machine.state is State.PROMPTING


def test_a_premium_rate_number_is_not_allowed_and_the_prompt_repeats():
    story = answered()
    assert story.type(PREMIUM_TYPED + "#")[-2:] == [PlayPrompt("not_allowed"), StartTimer("message", 2.5)]
    assert story.fire("message") == [PlayPrompt("enter_number"), StartTimer("prompt", 4.0)]
    assert story.dialled() == []


def test_a_foreign_number_is_not_allowed_by_the_default_prefix():
    story = answered()
    assert story.type("00420601123456#")[-2:] == [PlayPrompt("not_allowed"), StartTimer("message", 2.5)]


def test_a_foreign_number_is_dialled_when_the_did_allows_its_prefix():
    story = answered(allowed_prefixes=("+421", "+420"))
    story.type("00420601123456#")
    assert story.dialled() == [DialClient("+420601123456", "00420601123456")]


def test_a_refused_number_then_a_valid_one_is_dialled():
    story = refused_once()
    story.fire("message")
    story.type(CLIENT_TYPED + "#")
    assert story.dialled() == [DialClient(CLIENT, CLIENT_TYPED)]


def test_digits_of_a_refused_attempt_do_not_leak_into_the_next():
    story = answered()
    story.type("0905")
    story.fire("digits")
    story.fire("message")
    story.type(CLIENT_TYPED + "#")
    assert story.dialled() == [DialClient(CLIENT, CLIENT_TYPED)]


def test_after_the_last_attempt_the_employee_hears_why_and_is_hung_up_as_denied():
    story = answered()  # three attempts by default
    for _ in range(2):
        story.type(PREMIUM_TYPED + "#")
        story.fire("message")
    assert story.type(PREMIUM_TYPED + "#")[-2:] == [PlayPrompt("not_allowed"), StartTimer("message", 2.5)]
    assert story.fire("message") == [HangUpEmployee(), Finished(story.cdr)]
    assert story.cdr.result == "denied"
    assert story.cdr.client_dialled == PREMIUM_TYPED
    assert story.cdr.client_e164 == "+421900123456"
    assert story.dialled() == []


def test_the_number_of_attempts_is_the_dids():
    story = refused_once(attempts=1)
    assert story.fire("message") == [HangUpEmployee(), Finished(story.cdr)]


def test_keys_during_an_error_message_are_dropped():
    story = refused_once()
    assert story.type(CLIENT_TYPED + "#") == []
    story.fire("message")
    assert story.dialled() == []


# --- redial: ** calls the last client again ------------------------------------------


def test_two_stars_redial_the_last_client_at_once_without_hash():
    story = collecting(last_client=CLIENT)
    assert story.type("*") == [StartTimer("digits", 5)]
    assert story.type("*") == [
        CancelTimer("digits"),
        DialClient(CLIENT, "**"),
        PlayRingback(),
        StartTimer("client_ring", CLIENT_RING_TIMEOUT),
    ]
    assert story.machine.state is State.DIALING_CLIENT


def test_two_stars_may_barge_into_the_prompt():
    story = answered(last_client=CLIENT)
    story.type("**")
    assert story.dialled() == [DialClient(CLIENT, "**")]


def test_a_redialled_call_says_so_in_its_cdr():
    story = collecting(last_client=CLIENT)
    story.type("**")
    story(ClientAnswered(), after=5.0)
    story(ClientHangUp(), after=30.0)
    assert (story.cdr.result, story.cdr.redial) == ("bridged", True)
    assert (story.cdr.client_dialled, story.cdr.client_e164) == ("**", CLIENT)
    assert story.cdr.to_json_dict()["redial"] is True


def test_a_typed_number_is_no_redial_in_the_cdr():
    story = bridged(last_client=CLIENT)
    story(ClientHangUp())
    assert story.cdr.redial is False
    assert story.cdr.to_json_dict()["redial"] is False


def test_two_stars_without_a_last_client_are_an_invalid_number_and_an_attempt():
    story = collecting()
    assert story.type("**")[-3:] == [CancelTimer("digits"), PlayPrompt("invalid_number"),
                                      StartTimer("message", 2.0)]
    assert story.dialled() == []
    assert story.fire("message") == [PlayPrompt("enter_number"), StartTimer("prompt", 4.0)]
    story.type(CLIENT_TYPED + "#")
    assert story.dialled() == [DialClient(CLIENT, CLIENT_TYPED)]
    assert story.machine.cdr.redial is False


def test_two_stars_without_a_last_client_use_up_the_last_attempt():
    story = collecting(attempts=1)
    story.type("**")
    assert story.fire("message") == [HangUpEmployee(), Finished(story.cdr)]
    assert (story.cdr.result, story.cdr.redial, story.cdr.client_e164) == ("denied", True, None)


def test_a_last_client_the_policy_denies_now_is_not_allowed_and_not_dialled():
    story = collecting(last_client="+420601123456")  # the DID allows +421 only
    assert story.type("**")[-2:] == [PlayPrompt("not_allowed"), StartTimer("message", 2.5)]
    assert story.dialled() == []
    assert story.machine.cdr.client_e164 == "+420601123456"


def test_a_last_client_of_a_type_denied_since_is_not_allowed():
    story = collecting(last_client="+421900123456", denied_types=("premium_rate",))
    assert story.type("**")[-2:] == [PlayPrompt("not_allowed"), StartTimer("message", 2.5)]
    assert story.dialled() == []


@pytest.mark.parametrize("last_client", ["", "garbage", "+", "+42190512345678901234"])
def test_a_last_client_that_is_no_number_is_an_invalid_number(last_client):
    story = collecting(last_client=last_client)
    assert story.type("**")[-2:] == [PlayPrompt("invalid_number"), StartTimer("message", 2.0)]
    assert story.dialled() == []


def test_one_star_then_digits_still_clears_and_dials_what_was_typed():
    story = collecting(last_client="+421905999888")
    story.type("*" + CLIENT_TYPED + "#")
    assert story.dialled() == [DialClient(CLIENT, CLIENT_TYPED)]


@pytest.mark.parametrize("typed", ["5**", "0911*" + "*", "*5*", "5*5*"])
def test_a_star_after_digits_only_clears_and_never_redials(typed):
    story = collecting(last_client="+421905999888")
    story.type(typed)
    assert story.dialled() == []
    story.type(CLIENT_TYPED + "#")
    assert story.dialled() == [DialClient(CLIENT, CLIENT_TYPED)]


def test_a_cleared_entry_redials_with_two_stars_more():
    story = collecting(last_client=CLIENT)
    story.type("0911*" + "**")
    assert story.dialled() == [DialClient(CLIENT, "**")]


def test_two_stars_after_a_refused_number_redial():
    story = refused_once(last_client=CLIENT)
    story.fire("message")
    story.type("**")
    assert story.dialled() == [DialClient(CLIENT, "**")]
    assert story.machine.cdr.client_dialled == "**"


def test_a_star_of_the_refused_entry_does_not_carry_into_the_next():
    story = answered(last_client=CLIENT)
    story.type("*")
    story.fire("digits")  # one star and silence: an empty number, refused
    story.fire("message")
    story.type("*" + CLIENT_TYPED + "#")
    assert story.dialled() == [DialClient(CLIENT, CLIENT_TYPED)]


def test_two_stars_at_the_pin_prompt_only_clear_the_pin():
    story = answered(pin="246810", last_client=CLIENT)
    story.type("**")
    assert story.dialled() == []
    assert story.machine.state is State.PIN_COLLECTING
    story.type("246810#**")
    assert story.dialled() == [DialClient(CLIENT, "**")]


def test_star_hash_is_an_empty_number_not_a_redial():
    story = collecting(last_client=CLIENT)
    assert story.type("*#")[-2:] == [PlayPrompt("invalid_number"), StartTimer("message", 2.0)]
    assert story.dialled() == []


# --- calling the client -------------------------------------------------------------


def test_the_client_ringing_changes_nothing():
    assert dialing()(ClientRinging()) == []


def test_the_client_answering_stops_the_ringback_and_bridges():
    story = dialing()
    assert story(ClientAnswered(), after=5.0) == [
        CancelTimer("client_ring"), StopPrompt(), Bridge(), StartTimer("call_time", 3540.0),
    ]
    assert story.machine.cdr.client_answer_at == story.now


@pytest.mark.parametrize(
    ("code", "result", "message"),
    [
        (486, "client_busy", "client_busy"),
        (600, "client_busy", "client_busy"),
        (603, "client_busy", "client_busy"),
        (408, "client_no_answer", "client_no_answer"),
        (480, "client_no_answer", "client_no_answer"),
        (487, "client_no_answer", "client_no_answer"),
        (404, "failed", "client_failed"),
        (500, "failed", "client_failed"),
        (503, "failed", "client_failed"),
    ],
)
def test_a_client_not_reached_is_explained_to_the_employee_who_is_then_hung_up(code, result, message):
    story = dialing()
    assert story(ClientFailed(code), after=4.0) == [
        CancelTimer("client_ring"),
        StopPrompt(),
        PlayPrompt(message),
        StartTimer("message", PROMPT_SECONDS[message]),
    ]
    assert story.fire("message") == [HangUpEmployee(), Finished(story.cdr)]
    assert story.cdr.result == result
    assert story.cdr.ended_by == "engine"
    assert story.cdr.client_answer_at is None
    assert story.cdr.bridged_seconds == 0.0


def test_a_client_who_does_not_answer_is_cancelled_at_the_ring_timeout():
    story = dialing()
    assert story.fire("client_ring") == [
        CancelClient(),
        StopPrompt(),
        PlayPrompt("client_no_answer"),
        StartTimer("message", 3.5),
    ]
    story.fire("message")
    assert story.cdr.result == "client_no_answer"


def test_the_employee_hanging_up_during_the_goodbye_keeps_the_clients_result():
    story = goodbye()
    assert story(EmployeeHangUp(), after=1.0) == [CancelTimer("message"), Finished(story.cdr)]
    assert story.cdr.result == "client_busy"
    assert story.cdr.ended_by == "employee"


# --- how long a bridged call may last -------------------------------------------------


def warning_played(story: Story) -> list:
    """The warning's length passes while call_time runs on (the story's clock follows call_time)."""
    story.timers.pop("message")
    return story(TimerFired("message"))


def test_a_bridged_call_warns_the_employee_alone_a_minute_before_its_limit():
    story = bridged(max_call_minutes=10)
    assert story.timers["call_time"] == 540.0
    assert story.fire("call_time") == [
        MuteClient(), PlayPrompt("call_ending"), StartTimer("message", 2.75), StartTimer("call_time", 60.0),
    ]
    assert story.machine.state is State.BRIDGED


def test_the_employee_hears_the_client_again_once_the_warning_has_played():
    story = bridged(max_call_minutes=10)
    story.fire("call_time")
    assert warning_played(story) == [UnmuteClient()]
    assert story.timers == {"call_time": 60.0}


def test_a_bridged_call_is_ended_at_its_limit_both_legs_hung_up_and_the_cdr_says_limit():
    story = bridged(max_call_minutes=10)
    answered_at = story.now
    story.fire("call_time")
    warning_played(story)
    assert story.fire("call_time") == [HangUpClient(), HangUpEmployee(), Finished(story.cdr)]
    assert story.cdr.result == "bridged"
    assert story.cdr.ended_by == "limit"
    assert story.cdr.bridged_seconds == 600.0
    assert story.cdr.end_at == answered_at + 600.0
    assert story.timers == {}


def test_a_hang_up_during_the_warning_stops_both_timers():
    story = bridged(max_call_minutes=2)
    story.fire("call_time")
    out = story(ClientHangUp(), after=1.0)
    assert out == [CancelTimer("call_time"), CancelTimer("message"), HangUpEmployee(), Finished(story.cdr)]
    assert story.cdr.ended_by == "client"


def test_the_limit_is_an_hour_by_default():
    story = bridged()
    story.fire("call_time")
    warning_played(story)
    story.fire("call_time")
    assert story.cdr.bridged_seconds == 3600.0


def test_a_call_that_ends_before_the_warning_hears_no_warning_and_keeps_who_ended_it():
    story = bridged(max_call_minutes=2)
    assert story(ClientHangUp(), after=59.0)[0] == CancelTimer("call_time")
    assert PlayPrompt("call_ending") not in story.said
    assert story.cdr.ended_by == "client"
    assert story(TimerFired("call_time")) == []


def test_a_call_ended_by_a_party_after_the_warning_is_theirs_not_the_limits():
    story = bridged(max_call_minutes=2)
    story.fire("call_time")
    warning_played(story)
    assert story(EmployeeHangUp(), after=30.0) == [
        CancelTimer("call_time"), HangUpClient(), Finished(story.cdr),
    ]
    assert story.cdr.ended_by == "employee"


def test_the_call_time_runs_only_once_the_client_answered():
    story = dialing(max_call_minutes=2)
    assert "call_time" not in story.timers
    assert story(TimerFired("call_time")) == []


# --- the DID's PIN --------------------------------------------------------------------

PIN = "246810"


def test_with_a_pin_the_answered_employee_is_asked_for_it_first():
    story = ringing(pin=PIN)
    assert story(EmployeeAnswered()) == [
        CancelTimer("employee_ring"), PlayPrompt("enter_pin"), StartTimer("prompt", 3.0),
    ]
    assert story.machine.state is State.PIN_PROMPTING


def test_the_right_pin_and_hash_lead_to_the_number_prompt_then_the_client_is_dialled():
    story = answered(pin=PIN)
    assert story.type(PIN + "#")[-3:] == [CancelTimer("digits"), PlayPrompt("enter_number"),
                                          StartTimer("prompt", 4.0)]
    assert story.machine.state is State.PROMPTING
    story.type(CLIENT_TYPED + "#")
    assert story.dialled() == [DialClient(CLIENT, CLIENT_TYPED)]


def test_the_pin_and_the_number_may_be_typed_ahead_in_one_go():
    story = answered(pin=PIN)
    story.type(PIN + "#" + CLIENT_TYPED + "#", gap=0.1)
    assert story.dialled() == [DialClient(CLIENT, CLIENT_TYPED)]


def test_a_wrong_pin_is_told_and_asked_again_and_the_number_is_not_taken_as_a_pin():
    story = answered(pin=PIN)
    out = story.type("135790#")
    assert out[-2:] == [PlayPrompt("wrong_pin"), StartTimer("prompt", 3.25)]
    assert story.machine.state is State.PIN_PROMPTING
    story.type(CLIENT_TYPED + "#")  # a number where the PIN belongs is the second wrong try
    assert story.dialled() == []
    story.type(PIN + "#")
    story.type(CLIENT_TYPED + "#")
    assert story.dialled() == [DialClient(CLIENT, CLIENT_TYPED)]


def test_three_wrong_pins_end_the_callback_as_pin_refused_and_nothing_is_dialled():
    story = answered(pin=PIN)
    story.type("111111#222222#")
    out = story.type("333333#")
    assert out[-2:] == [HangUpEmployee(), Finished(story.cdr)]
    assert story.cdr.result == "pin_refused"
    assert story.cdr.ended_by == "engine"
    assert story.dialled() == []
    assert story.timers == {}
    assert story.type(CLIENT_TYPED + "#") == []


def test_the_pin_is_nowhere_in_the_cdr_or_the_commands():
    story = answered(pin=PIN)
    story.type(PIN + "#" + CLIENT_TYPED + "#")
    story(ClientAnswered())
    story(ClientHangUp(), after=5.0)
    assert PIN not in repr(story.said)
    assert PIN not in repr(story.cdr.to_json_dict())
    assert PIN not in repr(story.settings)


def test_a_pin_typed_with_a_star_in_it_is_cleared_and_typed_again():
    story = answered(pin=PIN)
    story.type("99*" + PIN + "#")
    assert story.machine.state is State.PROMPTING


def test_a_pin_with_a_digit_too_many_is_wrong():
    story = answered(pin=PIN)
    story.type(PIN + "0#")
    assert story.machine.state is State.PIN_PROMPTING
    assert story.said[-2] == PlayPrompt("wrong_pin")


def test_silence_after_a_pin_prompt_is_a_voicemail():
    story = answered(pin=PIN)
    story.fire("prompt")
    assert story.machine.state is State.PIN_COLLECTING
    assert story.fire("digits") == [HangUpEmployee(), Finished(story.cdr)]
    assert story.cdr.result == "no_digits"


def test_a_pin_left_unfinished_is_a_wrong_try_at_the_inter_digit_timeout():
    story = answered(pin=PIN)
    story.type("2468")
    assert story.fire("digits") == [PlayPrompt("wrong_pin"), StartTimer("prompt", 3.25)]


def test_endless_keys_without_hash_are_cut_off_as_a_wrong_pin():
    story = answered(pin=PIN)
    story.type("1" * 16)
    assert story.said[-2:] == [PlayPrompt("wrong_pin"), StartTimer("prompt", 3.25)]


@pytest.mark.parametrize(("typed", "result"), [("", "no_digits"), ("111111#", "pin_refused")])
def test_the_employee_hanging_up_at_the_pin(typed, result):
    story = answered(pin=PIN)
    story.type(typed)
    assert isinstance(story(EmployeeHangUp())[-1], Finished)
    assert story.cdr.result == result
    assert story.cdr.ended_by == "employee"


def test_abort_at_the_pin_hangs_up_the_employee():
    story = answered(pin=PIN)
    story.type("12")
    assert [c for c in story(Abort()) if not isinstance(c, CancelTimer)] == [
        HangUpEmployee(), Finished(story.cdr),
    ]


def test_without_a_pin_nobody_is_asked_for_one():
    assert answered().said[-2] == PlayPrompt("enter_number")


# --- hanging up ---------------------------------------------------------------------


def test_the_client_hanging_up_after_the_bridge_hangs_up_the_employee():
    story = bridged()
    assert story(ClientHangUp(), after=90.25) == [
        CancelTimer("call_time"), HangUpEmployee(), Finished(story.cdr),
    ]
    assert story.cdr.result == "bridged"
    assert story.cdr.ended_by == "client"
    assert story.cdr.bridged_seconds == 90.25


def test_the_employee_hanging_up_after_the_bridge_hangs_up_the_client():
    story = bridged()
    assert story(EmployeeHangUp(), after=12.0) == [
        CancelTimer("call_time"), HangUpClient(), Finished(story.cdr),
    ]
    assert story.cdr.result == "bridged"
    assert story.cdr.ended_by == "employee"
    assert story.cdr.bridged_seconds == 12.0


def test_the_employee_hanging_up_while_the_client_rings_cancels_the_client():
    story = dialing()
    assert story(EmployeeHangUp(), after=3.0) == [
        CancelTimer("client_ring"),
        CancelClient(),
        Finished(story.cdr),
    ]
    assert story.cdr.result == "failed"
    assert story.cdr.ended_by == "employee"
    assert story.cdr.client_e164 == CLIENT


def test_the_employee_hanging_up_during_the_prompt_is_no_digits():
    story = answered()
    assert story(EmployeeHangUp(), after=1.0) == [CancelTimer("prompt"), Finished(story.cdr)]
    assert story.cdr.result == "no_digits"
    assert story.cdr.ended_by == "employee"


def test_the_employee_hanging_up_while_typing_is_no_digits():
    story = collecting()
    story.type("0905")
    assert story(EmployeeHangUp()) == [CancelTimer("digits"), Finished(story.cdr)]
    assert story.cdr.result == "no_digits"


def test_the_employee_hanging_up_after_a_refused_number_is_denied():
    story = refused_once()
    assert story(EmployeeHangUp()) == [CancelTimer("message"), Finished(story.cdr)]
    assert story.cdr.result == "denied"


# --- the engine stops -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("reach", "legs", "result"),
    [
        (Story, [], "failed"),
        (waiting, [], "failed"),
        (ringing, [CancelEmployee()], "failed"),
        (answered, [HangUpEmployee()], "failed"),
        (refused_once, [HangUpEmployee()], "failed"),
        (dialing, [CancelClient(), HangUpEmployee()], "failed"),
        (goodbye, [HangUpEmployee()], "failed"),
        (bridged, [HangUpClient(), HangUpEmployee()], "bridged"),
    ],
    ids=["new", "waiting", "ringing", "prompting", "error-message", "dialing", "goodbye", "bridged"],
)
def test_abort_releases_every_leg_and_writes_the_cdr(reach, legs, result):
    story = reach()
    out = story(Abort(), after=2.0)
    assert [c for c in out if not isinstance(c, CancelTimer)] == [*legs, Finished(story.cdr)]
    assert story.timers == {}
    assert story.cdr.result == result
    assert story.cdr.ended_by == "engine"


# --- what must never move the call ----------------------------------------------------


@pytest.mark.parametrize("key", ["A", "D", "x", "", "12", " ", "+", "٣", None, 5, b"1", ["1"], {"1": 1}])
def test_garbage_keys_are_ignored(key):
    story = collecting()
    story.type("0905")
    assert story(Digit(key)) == []
    story.type("123456#")
    assert story.dialled() == [DialClient(CLIENT, CLIENT_TYPED)]


@pytest.mark.parametrize("name", ["bogus", "", None, 3, ["delay"], "delay", "employee_ring"])
def test_unknown_stale_and_cancelled_timers_are_ignored(name):
    story = answered()  # "delay" fired, "employee_ring" cancelled
    state = story.machine.state
    assert story(TimerFired(name)) == []
    assert story.machine.state is state


EVENTS = (
    Start(),
    EmployeeRinging(),
    EmployeeAnswered(),
    EmployeeFailed(486),
    EmployeeHangUp(),
    ClientRinging(),
    ClientAnswered(),
    ClientFailed(486),
    ClientHangUp(),
)
# Per state, the kinds of event that mean something there; every other one must be ignored.
MEANINGFUL = {
    "new": {Start},
    "waiting": set(),
    "calling": {EmployeeAnswered, EmployeeFailed},
    "prompting": {EmployeeHangUp},
    "error-message": {EmployeeHangUp},
    "dialing": {EmployeeHangUp, ClientAnswered, ClientFailed},
    "goodbye": {EmployeeHangUp},
    "bridged": {EmployeeHangUp, ClientHangUp},
}
REACH = {
    "new": Story,
    "waiting": waiting,
    "calling": ringing,
    "prompting": answered,
    "error-message": refused_once,
    "dialing": dialing,
    "goodbye": goodbye,
    "bridged": bridged,
}


@pytest.mark.parametrize(
    ("where", "event"),
    [(where, event) for where, meant in MEANINGFUL.items() for event in EVENTS if type(event) not in meant],
    ids=lambda value: type(value).__name__ if not isinstance(value, str) else value,
)
def test_events_out_of_order_are_ignored(where, event):
    story = REACH[where]()
    state, timers = story.machine.state, dict(story.timers)
    assert story(event) == []
    assert story.machine.state is state
    assert story.timers == timers


@pytest.mark.parametrize(
    "end",
    [
        lambda s: s(ClientHangUp()),
        lambda s: s(EmployeeHangUp()),
        lambda s: s(Abort()),
    ],
    ids=["client-hangs-up", "employee-hangs-up", "abort"],
)
def test_finished_comes_once_and_last_and_then_nothing_moves(end):
    story = bridged()
    end(story)
    assert isinstance(story.said[-1], Finished)
    for event in EVENTS:
        assert story(event) == []
    for key in "0#*":
        assert story(Digit(key)) == []
    for name in ("delay", "employee_ring", "retry", "prompt", "digits", "message", "client_ring"):
        assert story(TimerFired(name)) == []
    assert story(Abort()) == []
    assert len(story.finished) == 1
    assert story.machine.state is State.DONE


@pytest.mark.parametrize(
    ("reach", "timer"),
    [
        (lambda: ringing(retries=0), "employee_ring"),
        (collecting, "digits"),
        (lambda: refused_once(attempts=1), "message"),
        (goodbye, "message"),
    ],
    ids=["employee-no-answer", "no-digits", "denied", "client-busy"],
)
def test_a_timer_that_ends_the_callback_leaves_no_timer_running(reach, timer):
    story = reach()
    assert isinstance(story.fire(timer)[-1], Finished)
    assert story.timers == {}


# --- the CDR and the construction -----------------------------------------------------


def test_the_cdr_as_json_has_utc_iso_timestamps():
    story = bridged()
    story(EmployeeHangUp(), after=10.0)
    record = story.cdr.to_json_dict()
    assert record["trigger_at"] == "2023-11-14T22:13:20.000+00:00"
    assert record["employee_answer_at"] == "2023-11-14T22:13:24.000+00:00"
    assert record["end_at"].startswith("2023-11-14T22:")
    assert record["result"] == "bridged"
    assert record["client_e164"] == CLIENT
    assert record["recording"] is None


def test_the_cdr_as_json_keeps_what_never_happened_as_none():
    story = collecting()
    story.fire("digits")
    record = story.cdr.to_json_dict()
    assert record["client_answer_at"] is None
    assert record["client_dialled"] is None
    assert record["bridged_seconds"] == 0.0


def test_a_missing_prompt_length_is_refused_when_the_callback_is_made():
    lengths = {k: v for k, v in PROMPT_SECONDS.items() if k != "not_allowed"}
    with pytest.raises(ValueError, match="not_allowed"):
        Callback(DID, EMPLOYEE, model.CallbackSettings(enabled=True, list="x"), "SK", lengths, 30.0, T0)


# --- a restarted engine -------------------------------------------------------


def restored(story: Story, **settings) -> Story:
    """The story as a restarted engine takes it up: a new machine from the old one's snapshot."""
    snapshot = story.machine.snapshot()
    again = Story(**settings)
    again.now, again.timers = story.now, dict(story.timers)
    again.machine.restore(snapshot)
    return again


def test_a_snapshot_taken_up_again_goes_on_like_the_original():
    story = restored(waiting())
    assert story(Restarted()) == []
    assert story.fire("delay") == [CallEmployee(1, 20), StartTimer("employee_ring", 20)]


def test_a_call_back_left_ringing_is_placed_again_with_the_same_attempt_number():
    story = restored(ringing())
    assert story(Restarted()) == [CancelEmployee(), CancelTimer("employee_ring"), CallEmployee(1, 20),
                                  StartTimer("employee_ring", 20)]
    story(EmployeeAnswered())
    assert story.machine.state is State.PROMPTING


def test_a_bridged_call_goes_on_and_ends_once_with_the_whole_cdr():
    before = bridged()
    story = restored(before)
    assert story(Restarted()) == []
    story(EmployeeHangUp(), after=5.0)
    cdr = story.cdr
    assert (cdr.result, cdr.ended_by, cdr.client_e164) == ("bridged", "employee", CLIENT)
    assert cdr.trigger_at == T0 and cdr.client_answer_at == before.machine.cdr.client_answer_at


@pytest.mark.parametrize("stage", [answered, collecting, refused_once, goodbye])
def test_the_digits_stage_ends_on_the_employees_leg_with_engine_restart(stage):
    story = restored(stage())
    out = story(Restarted())
    assert HangUpEmployee() in out and story.machine.state is State.DONE
    assert story.cdr.ended_by == "engine_restart"


def test_a_client_still_ringing_is_cancelled_and_the_employee_hung_up():
    story = restored(dialing())
    out = story(Restarted())
    assert CancelClient() in out and HangUpEmployee() in out
    assert (story.cdr.result, story.cdr.ended_by) == ("failed", "engine_restart")


def test_what_was_typed_for_a_pin_is_never_in_a_snapshot():
    story = answered(pin="246810")
    story.fire("prompt")
    story.type("2468")
    assert "2468" not in repr(story.machine.snapshot())


def test_a_record_saved_before_redial_existed_is_taken_up_as_no_redial():
    story = waiting()
    snapshot = story.machine.snapshot()
    del snapshot["cdr"]["redial"]
    again = Story()
    again.machine.restore(snapshot)
    assert again.machine.cdr.redial is False


def test_a_finished_callback_does_nothing_more_when_restored():
    story = bridged()
    story(ClientHangUp())
    again = restored(story)
    assert again(Restarted()) == []
    assert again.machine.state is State.DONE
