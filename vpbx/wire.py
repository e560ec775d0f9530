"""The names the SIP edge (kemi/vpbx_router.py), the callback engine (callbackd)
and Kamailio's configuration (role kamailio) must agree on, spelt once.

kamailio.cfg and dispatcher.list are Jinja templates, which cannot import
these: tests/unit/test_wire.py checks that they spell the same names.
"""

# A trigger the edge hands to an engine carries the edge's decision, in E.164,
# in these headers; the edge removes them (any X-Vpbx-*) from what callers send.
DID_HEADER = "X-Vpbx-Did"
EMPLOYEE_HEADER = "X-Vpbx-Employee"
# An engine that took a trigger says so in its reply: "X-Vpbx-Callback: accepted".
# Any other reply (none, a 5xx) leaves the caller to the DID's routing scheme.
ACCEPT_HEADER = "X-Vpbx-Callback"
ACCEPTED = "accepted"

# The dispatcher set of the callback engines (dispatcher.list), probed with OPTIONS.
ENGINE_SET = 1

# Kamailio's htables (kamailio.cfg): the source addresses extensions registered
# from; banned sources (autoexpire = the ban time) and failed authentications
# per source (autoexpire = the window they are counted in).
REGSRC_TABLE = "vpbx_regsrc"
BAN_TABLE = "vpbx_ban"
AUTH_FAIL_TABLE = "vpbx_authfail"
