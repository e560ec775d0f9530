"""The inventory contract: what loads, what it becomes, and how each mistake is named."""

import hashlib
from pathlib import Path

import pytest
import yaml

from vpbx.model import (
    ERRORS_LISTED,
    CallbackSettings,
    ForwardStep,
    InventoryError,
    RejectStep,
    RingStep,
    dump,
    error_listing,
    load,
)

LAB_INVENTORY = Path(__file__).resolve().parents[2] / "inventories" / "lab" / "group_vars" / "all.yml"


@pytest.fixture
def inventory():
    """A valid inventory in the lab's shape, numbers written the way admins write them."""
    return {
        "vpbx_default_country": "SK",
        "vpbx_sip_listen": "127.0.0.1:5060",
        "vpbx_trunks": [
            {"name": "carrier", "address": "127.0.0.5:5080", "inbound_sources": ["127.0.0.5/32"]},
        ],
        "vpbx_number_lists": [
            {"name": "sales-mobiles", "numbers": ["+421905111222", "0905 333 444"]},
        ],
        "vpbx_extensions": [
            {"number": "100", "password": "unit-desk-a-secret"},
            {"number": "101", "password": "unit-desk-b-secret"},
        ],
        "vpbx_routing_schemes": [
            {
                "name": "office",
                "steps": [{"ring": ["100", "101"], "timeout": 5}, {"forward": "02 339 99888"}],
            },
            {"name": "closed", "steps": [{"reject": 480}]},
        ],
        "vpbx_numbers": [
            {
                "number": "+421233000111",
                "routing": "office",
                "callback": {"enabled": True, "list": "sales-mobiles", "record": True},
            },
            {"number": "+421233000222", "routing": "closed"},
        ],
    }


def errors_of(variables) -> list[str]:
    """The error list of a load that must fail."""
    with pytest.raises(InventoryError) as raised:
        load(variables)
    return raised.value.errors


def assert_reported(errors: list[str], path: str, *fragments: str) -> None:
    """Some error names exactly `path` and its message quotes every fragment."""
    for error in errors:
        where, _, message = error.partition(": ")
        if where == path and all(f in message for f in fragments):
            return
    pytest.fail(f"no error at {path!r} mentioning {fragments!r} in:\n" + "\n".join(errors))


# --- what loads, and what it becomes ---------------------------------------------------------------


def test_the_lab_inventory_loads():
    config = load(yaml.safe_load(LAB_INVENTORY.read_text()))
    assert "+421233000111" in config.numbers


def test_a_valid_inventory_loads(inventory):
    config = load(inventory)
    assert [t.name for t in config.trunks] == ["carrier"]


def test_variables_outside_the_vpbx_namespace_are_ignored(inventory):
    inventory["ansible_connection"] = "local"
    load(inventory)


def test_dump_of_a_loaded_inventory_loads_back_to_the_same_dump(inventory):
    once = dump(load(inventory))
    assert dump(load(once)) == once


def test_list_numbers_come_out_in_e164(inventory):
    config = load(inventory)
    assert config.number_lists["sales-mobiles"] == {"+421905111222", "+421905333444"}


def test_dids_come_out_in_e164(inventory):
    inventory["vpbx_numbers"][1]["number"] = "02 330 00222"
    assert set(load(inventory).numbers) == {"+421233000111", "+421233000222"}


def test_forward_numbers_come_out_in_e164(inventory):
    steps = load(inventory).routing_schemes["office"]
    assert steps[1] == ForwardStep("+421233999888")


def test_dump_writes_every_number_in_e164(inventory):
    dumped = dump(load(inventory))
    assert dumped["vpbx_number_lists"][0]["numbers"] == ["+421905111222", "+421905333444"]
    assert dumped["vpbx_routing_schemes"][0]["steps"][1] == {"forward": "+421233999888"}


def test_steps_keep_their_order_and_kind(inventory):
    schemes = load(inventory).routing_schemes
    steps = schemes["office"] + schemes["closed"]
    assert steps == (RingStep(("100", "101"), 5), ForwardStep("+421233999888"), RejectStep(480))


def test_a_did_without_callback_section_has_no_callback(inventory):
    assert load(inventory).numbers["+421233000222"].callback is None


# --- defaults ---------------------------------------------------------------------------------------


@pytest.fixture
def callback(inventory) -> CallbackSettings:
    return load(inventory).numbers["+421233000111"].callback


def test_ring_timeout_defaults_to_20_seconds(inventory):
    inventory["vpbx_routing_schemes"][0]["steps"][0] = {"ring": ["100"]}
    assert load(inventory).routing_schemes["office"][0] == RingStep(("100",), 20)


def test_callback_rejects_the_trigger_call_with_486_by_default(callback):
    assert callback.reject_code == 486


def test_callback_allows_dialling_home_country_numbers_by_default(callback):
    assert callback.allowed_prefixes == ("+421",)


def test_callback_denies_premium_rate_and_shared_cost_by_default(callback):
    assert callback.denied_types == ("premium_rate", "shared_cost")


def test_callback_speaks_slovak_by_default(callback):
    assert callback.language == "sk"


def test_callback_keeps_what_the_inventory_says(callback):
    assert (callback.enabled, callback.list, callback.record) == (True, "sales-mobiles", True)


# --- one test per kind of mistake -------------------------------------------------------------------


def test_an_unknown_vpbx_variable_is_reported(inventory):
    inventory["vpbx_trunk"] = []
    assert_reported(errors_of(inventory), "vpbx_trunk", "unknown variable")


@pytest.mark.parametrize(
    ("section", "index", "path"),
    [
        ("vpbx_trunks", 0, "vpbx_trunks[0]"),
        ("vpbx_number_lists", 0, "vpbx_number_lists[0]"),
        ("vpbx_extensions", 1, "vpbx_extensions[1]"),
        ("vpbx_numbers", 1, "vpbx_numbers[1]"),
    ],
)
def test_an_unknown_key_in_an_item_is_reported(inventory, section, index, path):
    inventory[section][index]["colour"] = "blue"
    assert_reported(errors_of(inventory), f"{path}.colour", "unknown key")


def test_an_unknown_key_in_a_callback_is_reported(inventory):
    inventory["vpbx_numbers"][0]["callback"]["recording"] = True
    assert_reported(errors_of(inventory), "vpbx_numbers[0].callback.recording", "unknown key")


@pytest.mark.parametrize(
    "variable", ["vpbx_default_country", "vpbx_sip_listen", "vpbx_trunks", "vpbx_numbers"]
)
def test_a_missing_required_variable_is_reported(inventory, variable):
    del inventory[variable]
    assert_reported(errors_of(inventory), variable, "is required")


@pytest.mark.parametrize(
    ("section", "index", "key"),
    [
        ("vpbx_numbers", 1, "routing"),
        ("vpbx_numbers", 1, "number"),
        ("vpbx_trunks", 0, "address"),
        ("vpbx_number_lists", 0, "numbers"),
        ("vpbx_extensions", 0, "password"),
        ("vpbx_routing_schemes", 1, "steps"),
    ],
)
def test_a_missing_required_key_in_an_item_is_reported(inventory, section, index, key):
    del inventory[section][index][key]
    assert_reported(errors_of(inventory), f"{section}[{index}].{key}", "is required")


def test_a_callback_without_enabled_is_reported(inventory):
    del inventory["vpbx_numbers"][0]["callback"]["enabled"]
    assert_reported(errors_of(inventory), "vpbx_numbers[0].callback.enabled", "is required")


def test_a_number_that_does_not_parse_in_a_list_is_reported(inventory):
    inventory["vpbx_number_lists"][0]["numbers"][1] = "0905 ABC 444"
    assert_reported(errors_of(inventory), "vpbx_number_lists[0].numbers[1]", "'0905 ABC 444'")


def test_a_list_number_the_numbering_plan_does_not_assign_is_reported(inventory):
    inventory["vpbx_number_lists"][0]["numbers"][1] = "0905 12"
    assert_reported(errors_of(inventory), "vpbx_number_lists[0].numbers[1]", "'0905 12'")


def test_a_did_that_does_not_parse_is_reported(inventory):
    inventory["vpbx_numbers"][1]["number"] = "02 330"
    assert_reported(errors_of(inventory), "vpbx_numbers[1].number", "'02 330'")


def test_a_forward_number_that_does_not_parse_is_reported(inventory):
    inventory["vpbx_routing_schemes"][0]["steps"][1] = {"forward": "+421 23"}
    assert_reported(errors_of(inventory), "vpbx_routing_schemes[0].steps[1].forward", "'+421 23'")


def test_an_invalid_cidr_is_reported(inventory):
    inventory["vpbx_trunks"][0]["inbound_sources"] = ["127.0.0.300/32"]
    assert_reported(errors_of(inventory), "vpbx_trunks[0].inbound_sources[0]", "'127.0.0.300/32'")


def test_a_cidr_with_host_bits_set_is_reported_with_the_network_meant(inventory):
    inventory["vpbx_trunks"][0]["inbound_sources"] = ["127.0.0.5/24"]
    assert_reported(
        errors_of(inventory), "vpbx_trunks[0].inbound_sources[0]", "'127.0.0.5/24'", "127.0.0.0/24"
    )


def test_a_source_claimed_by_two_trunks_is_reported(inventory):
    inventory["vpbx_trunks"].append(
        {"name": "backup", "address": "127.0.0.6:5080", "inbound_sources": ["127.0.0.0/24"]}
    )
    assert_reported(
        errors_of(inventory),
        "vpbx_trunks[1].inbound_sources[0]",
        "127.0.0.0/24",
        "127.0.0.5/32",
        "vpbx_trunks[0].inbound_sources[0]",
    )


def test_the_same_source_twice_in_one_trunk_is_reported(inventory):
    inventory["vpbx_trunks"][0]["inbound_sources"] = ["127.0.0.5/32", "127.0.0.5/32"]
    assert_reported(errors_of(inventory), "vpbx_trunks[0].inbound_sources[1]", "127.0.0.5/32")


@pytest.mark.parametrize("second", ["+421233000111", "02 330 00111"], ids=["same-notation", "national"])
def test_a_did_defined_twice_is_reported_whatever_its_notation(inventory, second):
    inventory["vpbx_numbers"][1]["number"] = second
    assert_reported(errors_of(inventory), "vpbx_numbers[1].number", "'+421233000111'", "vpbx_numbers[0]")


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("vpbx_trunks", "name"),
        ("vpbx_number_lists", "name"),
        ("vpbx_routing_schemes", "name"),
        ("vpbx_extensions", "number"),
    ],
)
def test_a_name_defined_twice_is_reported(inventory, section, key):
    first = inventory[section][0]
    twin = {**first, "inbound_sources": ["127.0.0.6/32"]} if section == "vpbx_trunks" else dict(first)
    inventory[section].append(twin)
    index = len(inventory[section]) - 1
    assert_reported(errors_of(inventory), f"{section}[{index}].{key}", repr(first[key]), "defined twice")


def test_a_did_routed_to_a_missing_scheme_is_reported(inventory):
    inventory["vpbx_numbers"][0]["routing"] = "night"
    assert_reported(errors_of(inventory), "vpbx_numbers[0].routing", "'night'")


def test_a_callback_naming_a_missing_list_is_reported(inventory):
    inventory["vpbx_numbers"][0]["callback"]["list"] = "vip"
    assert_reported(errors_of(inventory), "vpbx_numbers[0].callback.list", "'vip'")


def test_an_enabled_callback_without_a_list_is_reported(inventory):
    del inventory["vpbx_numbers"][0]["callback"]["list"]
    assert_reported(errors_of(inventory), "vpbx_numbers[0].callback.list", "required when callback")


def test_a_disabled_callback_needs_no_list(inventory):
    inventory["vpbx_numbers"][0]["callback"] = {"enabled": False}
    assert load(inventory).numbers["+421233000111"].callback.enabled is False


def test_a_step_of_unknown_kind_is_reported(inventory):
    inventory["vpbx_routing_schemes"][0]["steps"][0] = {"ring_all": ["100", "101"]}
    assert_reported(errors_of(inventory), "vpbx_routing_schemes[0].steps[0]", "ring_all")


def test_a_step_of_two_kinds_is_reported(inventory):
    inventory["vpbx_routing_schemes"][1]["steps"][0] = {"ring": ["100"], "reject": 480}
    errors = errors_of(inventory)
    assert_reported(errors, "vpbx_routing_schemes[1].steps[0]", "exactly one", "'reject', 'ring'")


def test_ringing_an_unknown_extension_is_reported(inventory):
    inventory["vpbx_routing_schemes"][0]["steps"][0]["ring"] = ["100", "199"]
    assert_reported(errors_of(inventory), "vpbx_routing_schemes[0].steps[0].ring[1]", "'199'")


def test_a_reject_step_code_out_of_range_is_reported(inventory):
    inventory["vpbx_routing_schemes"][1]["steps"][0] = {"reject": 200}
    assert_reported(errors_of(inventory), "vpbx_routing_schemes[1].steps[0].reject", "200")


def test_a_callback_reject_code_out_of_range_is_reported(inventory):
    inventory["vpbx_numbers"][0]["callback"]["reject_code"] = 200
    assert_reported(errors_of(inventory), "vpbx_numbers[0].callback.reject_code", "200")


def test_an_unknown_default_country_is_reported(inventory):
    inventory["vpbx_default_country"] = "XX"
    assert_reported(errors_of(inventory), "vpbx_default_country", "'XX'")


@pytest.mark.parametrize(
    ("listen", "quoted"),
    [
        ("localhost", "'localhost'"),
        ("999.1.1.1:5060", "'999.1.1.1'"),
        ("127.0.0.1:70000", "'127.0.0.1:70000'"),
    ],
    ids=["no-port", "bad-address", "bad-port"],
)
def test_a_sip_listen_that_is_not_ip_and_port_is_reported(inventory, listen, quoted):
    inventory["vpbx_sip_listen"] = listen
    assert_reported(errors_of(inventory), "vpbx_sip_listen", quoted)


def test_steps_that_are_not_a_list_are_reported(inventory):
    inventory["vpbx_routing_schemes"][1]["steps"] = {"reject": 480}
    assert_reported(errors_of(inventory), "vpbx_routing_schemes[1].steps", "must be a list", "dict")


def test_an_enabled_flag_that_is_not_a_boolean_is_reported(inventory):
    inventory["vpbx_numbers"][0]["callback"]["enabled"] = "yes"
    assert_reported(errors_of(inventory), "vpbx_numbers[0].callback.enabled", "'yes'")


def test_a_timeout_written_as_a_string_is_reported(inventory):
    inventory["vpbx_routing_schemes"][0]["steps"][0]["timeout"] = "20"
    assert_reported(errors_of(inventory), "vpbx_routing_schemes[0].steps[0].timeout", "'20'")


def test_a_callback_list_written_as_a_yaml_list_is_reported(inventory):
    inventory["vpbx_numbers"][0]["callback"]["list"] = ["sales-mobiles"]
    assert_reported(errors_of(inventory), "vpbx_numbers[0].callback.list", "['sales-mobiles']")


def test_a_denied_type_that_is_not_a_string_is_reported(inventory):
    inventory["vpbx_numbers"][0]["callback"]["denied_types"] = [["premium_rate"]]
    assert_reported(errors_of(inventory), "vpbx_numbers[0].callback.denied_types[0]", "['premium_rate']")


def test_an_empty_trunk_list_is_reported(inventory):
    inventory["vpbx_trunks"] = []
    assert_reported(errors_of(inventory), "vpbx_trunks", "at least one trunk")


def test_a_trunk_list_left_empty_in_yaml_is_reported(inventory):
    inventory["vpbx_trunks"] = None
    assert_reported(errors_of(inventory), "vpbx_trunks", "at least one trunk")


def test_every_mistake_of_one_inventory_is_reported_in_one_load(inventory):
    inventory["vpbx_colour"] = "blue"
    inventory["vpbx_trunks"][0]["inbound_sources"] = ["127.0.0.5/24"]
    inventory["vpbx_number_lists"][0]["numbers"][0] = "abc"
    inventory["vpbx_routing_schemes"][0]["steps"][0]["ring"] = ["199"]
    inventory["vpbx_numbers"][0]["callback"]["list"] = "vip"
    inventory["vpbx_numbers"][1]["routing"] = "night"
    errors = errors_of(inventory)
    for path in (
        "vpbx_colour",
        "vpbx_trunks[0].inbound_sources[0]",
        "vpbx_number_lists[0].numbers[0]",
        "vpbx_routing_schemes[0].steps[0].ring[0]",
        "vpbx_numbers[0].callback.list",
        "vpbx_numbers[1].routing",
    ):
        assert_reported(errors, path)


# --- extension passwords ---------------------------------------------------------------------------


def set_password(inventory, password) -> None:
    inventory["vpbx_extensions"][0]["password"] = password


def test_a_good_password_passes(inventory):
    set_password(inventory, "front-desk-Xq7vR2")
    assert load(inventory).extensions["100"] == "front-desk-Xq7vR2"


def test_a_password_shorter_than_12_characters_is_reported(inventory):
    set_password(inventory, "Xq7vR2pL9wz")
    assert_reported(errors_of(inventory), "vpbx_extensions[0].password", "at least 12 characters")


def test_a_password_that_is_the_extension_number_is_reported(inventory):
    set_password(inventory, "100")
    assert_reported(errors_of(inventory), "vpbx_extensions[0].password", "extension number '100'")


def test_a_password_containing_the_extension_number_is_reported(inventory):
    set_password(inventory, "front-desk-100-secret")
    assert_reported(errors_of(inventory), "vpbx_extensions[0].password", "extension number '100'")


def test_a_password_of_one_repeated_character_is_reported(inventory):
    set_password(inventory, "x" * 16)
    assert_reported(errors_of(inventory), "vpbx_extensions[0].password", "one character repeated")


@pytest.mark.parametrize("weak", ["Xq7vR2pL9wz", "front-desk-100-secret", "x" * 16])
def test_a_password_error_never_quotes_the_password(inventory, weak):
    set_password(inventory, weak)
    assert not [e for e in errors_of(inventory) if weak in e]


def test_a_password_that_is_not_a_string_is_reported_without_its_value(inventory):
    set_password(inventory, 918273645546)
    errors = errors_of(inventory)
    assert_reported(errors, "vpbx_extensions[0].password", "non-empty string", "int")
    assert not [e for e in errors if "918273645546" in e]


def test_rendered_data_is_not_held_to_the_password_rules(inventory):
    # A routing.json an older deploy left in place still loads in the services.
    rendered = dump(load(inventory))
    rendered["vpbx_extensions"][0]["password"] = "secret-100"
    assert load(rendered, rendered=True).extensions["100"] == "secret-100"


def test_rendered_data_without_extensions_loads_as_callbackd_gets_it(inventory):
    rendered = dump(load(inventory))
    del rendered["vpbx_extensions"]
    config = load(rendered, rendered=True)
    assert config.extensions == {}
    assert config.routing_schemes == load(inventory).routing_schemes


def test_an_inventory_without_extensions_cannot_ring_any(inventory):
    del inventory["vpbx_extensions"]
    assert_reported(errors_of(inventory), "vpbx_routing_schemes[0].steps[0].ring[0]", "'100'")


def test_rendered_routing_data_loads_to_the_same_configuration(inventory):
    rendered = dump(load(inventory))
    assert load(rendered, rendered=True) == load(rendered)


def test_rendered_data_still_normalizes_what_is_not_in_e164_form(inventory):
    inventory["vpbx_number_lists"][0]["numbers"] = ["0905 123 456"]
    config = load(inventory, rendered=True)
    assert config.number_lists[inventory["vpbx_number_lists"][0]["name"]] == {"+421905123456"}


def test_a_trunk_names_its_attestation_header_or_the_key_is_named():
    base = {
        "vpbx_default_country": "SK",
        "vpbx_sip_listen": "127.0.0.1:5060",
        "vpbx_routing_schemes": [{"name": "closed", "steps": [{"reject": 480}]}],
        "vpbx_numbers": [{"number": "+421233000111", "routing": "closed"}],
    }
    good = load({**base, "vpbx_trunks": [{"name": "c", "address": "127.0.0.5:5080",
                                                 "attestation_header": "X-Verstat"}]})
    assert good.trunks[0].attestation_header == "X-Verstat"
    assert load(dump(good)).trunks[0].attestation_header == "X-Verstat"
    with pytest.raises(InventoryError, match=r"vpbx_trunks\[0\]\.attestation_header: must be a SIP"):
        load({**base, "vpbx_trunks": [{"name": "c", "address": "127.0.0.5:5080",
                                              "attestation_header": "X Verstat: yes"}]})


# --- abuse limits ---------------------------------------------------------------------------------

CB = "vpbx_numbers[0].callback"


def set_callback(inventory, **keys) -> None:
    inventory["vpbx_numbers"][0]["callback"].update(keys)


def test_callback_limits_default_to_20_an_hour_100_a_day_and_an_hour_long_call(callback):
    assert (callback.max_per_hour, callback.max_per_day, callback.max_call_minutes) == (20, 100, 60)


def test_callback_retries_no_answer_and_busy_but_not_a_decline_by_default(callback):
    assert callback.retry_on == ("no_answer", "busy")


def test_callback_has_no_pin_by_default(callback):
    assert callback.pin is None


def test_an_engine_takes_500_callbacks_at_once_by_default(inventory):
    assert load(inventory).callback_max_concurrent == 500


def test_the_limits_keep_what_the_inventory_says(inventory):
    set_callback(inventory, max_per_hour=3, max_per_day=10, max_call_minutes=5,
                 retry_on=["declined", "failed"], pin="0246810")
    inventory["vpbx_callback_max_concurrent"] = 40
    config = load(inventory)
    callback = config.numbers["+421233000111"].callback
    assert (callback.max_per_hour, callback.max_per_day, callback.max_call_minutes) == (3, 10, 5)
    assert callback.retry_on == ("declined", "failed")
    assert callback.pin == "0246810"
    assert config.callback_max_concurrent == 40


def test_an_empty_retry_on_never_retries(inventory):
    set_callback(inventory, retry_on=[])
    assert load(inventory).numbers["+421233000111"].callback.retry_on == ()


def test_the_limits_survive_the_rendered_routing_file(inventory):
    set_callback(inventory, max_per_hour=3, retry_on=["busy"], pin="135790")
    inventory["vpbx_callback_max_concurrent"] = 7
    dumped = dump(load(inventory))
    assert dumped["vpbx_callback_max_concurrent"] == 7
    assert dumped["vpbx_numbers"][0]["callback"]["retry_on"] == ["busy"]
    again = load(dumped, rendered=True)
    assert again == load(inventory)
    assert again.numbers["+421233000111"].callback.pin == "135790"


def test_a_routing_file_older_than_the_limits_loads_with_their_defaults(inventory):
    dumped = dump(load(inventory))
    del dumped["vpbx_callback_max_concurrent"]
    for key in ("max_per_hour", "max_per_day", "max_call_minutes", "retry_on"):
        del dumped["vpbx_numbers"][0]["callback"][key]
    config = load(dumped, rendered=True)
    assert config.callback_max_concurrent == 500
    assert config.numbers["+421233000111"].callback.retry_on == ("no_answer", "busy")


@pytest.mark.parametrize(
    ("key", "value"),
    [("max_per_hour", 0), ("max_per_hour", "20"), ("max_per_day", 0), ("max_per_day", 100_001),
     ("max_call_minutes", 1), ("max_call_minutes", 1441), ("max_call_minutes", True)],
)
def test_a_limit_out_of_range_is_reported_by_its_key(inventory, key, value):
    set_callback(inventory, **{key: value})
    assert_reported(errors_of(inventory), f"{CB}.{key}", "whole number")


@pytest.mark.parametrize("value", [0, -1, 100_001, "500", None])
def test_a_concurrency_cap_out_of_range_is_reported(inventory, value):
    inventory["vpbx_callback_max_concurrent"] = value
    assert_reported(errors_of(inventory), "vpbx_callback_max_concurrent", "whole number")


def test_recordings_are_kept_90_days_by_default(inventory):
    assert load(inventory).recordings_keep_days == 90


@pytest.mark.parametrize("days", [0, 1, 3650])
def test_the_recordings_kept_days_survive_the_rendered_routing_file(inventory, days):
    inventory["vpbx_recordings_keep_days"] = days
    dumped = dump(load(inventory))
    assert dumped["vpbx_recordings_keep_days"] == days
    assert load(dumped, rendered=True).recordings_keep_days == days


@pytest.mark.parametrize("value", [-1, 36_501, "90", 1.5, True, None])
def test_a_bad_recordings_kept_days_is_reported_by_its_key(inventory, value):
    inventory["vpbx_recordings_keep_days"] = value
    assert_reported(errors_of(inventory), "vpbx_recordings_keep_days", "whole number")


def test_an_unknown_retry_cause_is_reported_with_the_known_ones(inventory):
    set_callback(inventory, retry_on=["no_answer", "603"])
    assert_reported(errors_of(inventory), f"{CB}.retry_on[1]", "'603'", "no_answer, busy, declined, failed")


def test_a_retry_on_that_is_not_a_list_is_reported(inventory):
    set_callback(inventory, retry_on="busy")
    assert_reported(errors_of(inventory), f"{CB}.retry_on", "must be a list")


@pytest.mark.parametrize("pin", ["12345", "1234567890123", "12345a", "12 345 6", "١٢٣٤٥٦", ""])
def test_a_pin_that_is_not_6_to_12_digits_is_reported_without_its_value(inventory, pin):
    set_callback(inventory, pin=pin)
    errors = errors_of(inventory)
    assert_reported(errors, f"{CB}.pin", "6 to 12 digits")
    if pin:
        assert all(pin not in error for error in errors)


@pytest.mark.parametrize("pin", [123456, 24681012, 1.5, ["123456"]])
def test_a_pin_written_unquoted_is_reported_without_its_value(inventory, pin):
    set_callback(inventory, pin=pin)
    errors = errors_of(inventory)
    assert_reported(errors, f"{CB}.pin", "digits in quotes")
    assert all(str(pin) not in error for error in errors)


def test_the_pin_is_not_in_the_callbacks_repr(inventory):
    set_callback(inventory, pin="975310")
    assert "975310" not in repr(load(inventory))


# -- a refusal of a large list: the first errors, then a count of the rest ----


def test_a_refusal_lists_the_first_errors_and_counts_the_rest(inventory):
    # Numbers +4210...: Slovakia assigns none of them.
    inventory["vpbx_number_lists"][0]["numbers"] += [f"+4210{n:08d}" for n in range(5000)]
    with pytest.raises(InventoryError) as raised:
        load(inventory)
    assert len(raised.value.errors) == 5000
    lines = str(raised.value).splitlines()
    assert len(lines) == ERRORS_LISTED + 1
    assert lines[0].startswith("vpbx_number_lists[0].numbers[2]: '+421000000000'")
    assert lines[ERRORS_LISTED - 1].startswith(f"vpbx_number_lists[0].numbers[{ERRORS_LISTED + 1}]: ")
    assert lines[-1] == f"... and {5000 - ERRORS_LISTED} more errors (5000 in all)"


def test_a_listing_of_few_errors_is_all_of_them():
    errors = [f"vpbx_numbers[{i}].routing: no routing scheme" for i in range(3)]
    assert error_listing(errors, limit=3) == errors
    assert error_listing([]) == []


def test_one_error_over_the_limit_is_counted_as_one():
    errors = [f"vpbx_numbers[{i}].number: bad" for i in range(3)]
    assert error_listing(errors, limit=2) == [*errors[:2], "... and 1 more error (3 in all)"]


def test_errors_of_different_keys_keep_their_order_in_the_listing(inventory):
    inventory["vpbx_number_lists"][0]["numbers"] += ["+421000000001"] * 30
    inventory["vpbx_numbers"][1]["routing"] = "closd"
    with pytest.raises(InventoryError) as raised:
        load(inventory)
    lines = str(raised.value).splitlines()
    # The errors come in the order of the inventory: the lists' before the DIDs'.
    assert all(line.startswith("vpbx_number_lists[0].numbers[") for line in lines[:ERRORS_LISTED])
    assert lines[-1] == f"... and {31 - ERRORS_LISTED} more errors (31 in all)"


# Ansible's argument spec leaves vpbx_number_lists to vpbx.model (a 100k list
# would cost seconds there): its types are refused here, each by its key.
@pytest.mark.parametrize(("value", "path", "says"), [
    ("sales", "vpbx_number_lists", "must be a list"),
    (["sales"], "vpbx_number_lists[0]", "must be a mapping"),
    ([{"name": "sales", "numbers": "+421905111222"}], "vpbx_number_lists[0].numbers", "must be a list"),
    ([{"name": "sales", "numbers": [{"n": 1}]}], "vpbx_number_lists[0].numbers[0]", "as a string"),
    ([{"name": ["sales"], "numbers": []}], "vpbx_number_lists[0].name", "non-empty string"),
])
def test_a_number_list_of_the_wrong_type_is_reported_by_its_key(inventory, value, path, says):
    inventory["vpbx_number_lists"] = value
    for number in inventory["vpbx_numbers"]:
        number.pop("callback", None)
    assert_reported(errors_of(inventory), path, says)


# --- issue: black/white lists, anonymous rule, `when:` and the time zone ------------------------------


def test_a_did_takes_black_and_white_lists_an_anonymous_rule_and_a_refuse_code(inventory):
    inventory["vpbx_numbers"][1].update(blacklist="sales-mobiles", whitelist="sales-mobiles",
                                        anonymous="reject", refuse_code=403)
    config = load(inventory)
    did = config.numbers["+421233000222"]
    assert (did.blacklist, did.whitelist, did.anonymous, did.refuse_code) == (
        "sales-mobiles", "sales-mobiles", "reject", 403)
    assert load(dump(config), rendered=True) == config
    plain = config.numbers["+421233000111"]
    assert (plain.blacklist, plain.whitelist, plain.anonymous, plain.refuse_code) == (
        None, None, "allow", 603)


@pytest.mark.parametrize(("key", "value", "words"), [
    ("blacklist", "vips", "no number list named 'vips'"),
    ("whitelist", ["sales-mobiles"], "no number list named"),
    ("anonymous", "deny", "must be allow or reject, got 'deny'"),
    ("anonymous", True, "must be allow or reject"),
    ("refuse_code", 200, "from 400 to 699"),
])
def test_a_wrong_screening_key_is_named(inventory, key, value, words):
    inventory["vpbx_numbers"][1][key] = value
    assert_reported(errors_of(inventory), f"vpbx_numbers[1].{key}", words)


def test_a_step_with_when_loads_and_reads_back(inventory):
    inventory["vpbx_routing_schemes"][0]["steps"] = [
        {"ring": ["100"], "timeout": 20, "when": {"days": "mon-fri", "hours": "08:00-17:00"}},
        {"forward": "+421233999888", "when": {"dates": ["12-24", "12-25"]}},
        {"reject": 480},
    ]
    config = load(inventory)
    ring, forward, reject = config.routing_schemes["office"]
    assert ring.when.days == frozenset(range(5)) and ring.when.hours == ((480, 1020),)
    assert forward.when.yearly == frozenset({(12, 24), (12, 25)}) and reject.when is None
    assert load(dump(config), rendered=True) == config


def test_a_bad_day_in_a_step_condition_is_named_with_its_path(inventory):
    inventory["vpbx_routing_schemes"][0]["steps"][1]["when"] = {"days": ["mnday"]}
    assert_reported(errors_of(inventory), "vpbx_routing_schemes[0].steps[1].when.days[0]",
                    "'mnday' is not a day")


def test_an_unknown_time_zone_is_named(inventory):
    inventory["vpbx_timezone"] = "Europe/Bratislav"
    assert_reported(errors_of(inventory), "vpbx_timezone", "'Europe/Bratislav' is not a time zone")


def test_the_time_zone_defaults_to_the_offices(inventory):
    assert load(inventory).timezone == "Europe/Bratislava"
    inventory["vpbx_timezone"] = "Europe/Prague"
    assert load(dump(load(inventory)), rendered=True).timezone == "Europe/Prague"


# --- vpbx_api_keys ---------------------------------------------------------------------------------

UNIT_TOKEN_SHA256 = hashlib.sha256(b"unit-api-token").hexdigest()


def api_key(**changes):
    return {"name": "crm", "token_sha256": UNIT_TOKEN_SHA256, "dids": ["02 330 00111"], **changes}


def test_an_api_key_loads_with_its_dids_in_e164(inventory):
    inventory["vpbx_api_keys"] = [api_key()]
    (key,) = load(inventory).api_keys
    assert (key.name, key.token_sha256, key.dids) == ("crm", UNIT_TOKEN_SHA256, frozenset({"+421233000111"}))


def test_api_keys_are_dumped_and_load_back(inventory):
    inventory["vpbx_api_keys"] = [api_key()]
    dumped = dump(load(inventory))
    assert dumped["vpbx_api_keys"] == [{"name": "crm", "token_sha256": UNIT_TOKEN_SHA256,
                                        "dids": ["+421233000111"]}]
    assert dump(load(dumped, rendered=True)) == dumped


def test_no_api_keys_by_default(inventory):
    assert load(inventory).api_keys == ()


@pytest.mark.parametrize("digest", ["unit-api-token", UNIT_TOKEN_SHA256.upper(), UNIT_TOKEN_SHA256[:-1], 42])
def test_an_api_key_that_is_no_sha256_is_reported_and_never_quoted(inventory, digest):
    inventory["vpbx_api_keys"] = [api_key(token_sha256=digest)]
    errors = errors_of(inventory)
    assert_reported(errors, "vpbx_api_keys[0].token_sha256", "sha256", "value not shown")
    assert not any("unit-api-token" in error for error in errors)


def test_an_api_key_for_a_did_without_callback_is_reported(inventory):
    inventory["vpbx_api_keys"] = [api_key(dids=["+421233000111", "+421233000222"])]
    assert_reported(errors_of(inventory), "vpbx_api_keys[0].dids[1]", "+421233000222", "callback enabled")


def test_an_api_key_for_an_unknown_did_is_reported(inventory):
    inventory["vpbx_api_keys"] = [api_key(dids=["+421233000999"])]
    assert_reported(errors_of(inventory), "vpbx_api_keys[0].dids[0]", "no DID")


def test_an_api_key_without_dids_is_reported(inventory):
    inventory["vpbx_api_keys"] = [api_key(dids=[])]
    assert_reported(errors_of(inventory), "vpbx_api_keys[0].dids", "non-empty list")


def test_two_api_keys_of_one_name_or_one_token_are_reported(inventory):
    inventory["vpbx_api_keys"] = [api_key(), api_key(token_sha256="0" * 64), api_key(name="other")]
    errors = errors_of(inventory)
    assert_reported(errors, "vpbx_api_keys[1].name", "defined twice")
    assert_reported(errors, "vpbx_api_keys[2].token_sha256", "defined twice")


def test_an_unknown_key_in_an_api_key_is_reported(inventory):
    inventory["vpbx_api_keys"] = [api_key(token="unit-api-token")]
    assert_reported(errors_of(inventory), "vpbx_api_keys[0].token", "unknown key")
