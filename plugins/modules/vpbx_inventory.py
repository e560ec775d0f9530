#!/usr/bin/python
# The work is done by the action plugin of the same name on the controller;
# this file documents it for ansible-doc and ansible-lint.

DOCUMENTATION = r"""
---
module: vpbx_inventory
short_description: Validate the vPBX inventory contract and publish it normalized
description:
  - Reads every C(vpbx_*) variable of the host, validates it with C(vpbx.model)
    (types, numbers for C(vpbx_default_country), trunk CIDRs, references between
    lists, schemes and DIDs, unknown keys, extension passwords) and fails
    listing every error, each naming the file, the key path and the offending
    value (never a password: its error says the rule it breaks).
  - Names every variable that takes a role's prefix (C(kamailio_), C(runtime_),
    ...) but is none of that role's variables (its C(defaults/main.yml) and
    C(meta/argument_specs.yml)), with the closest one it may have meant.
  - On success sets the fact C(vpbx_config), the contract with every number in E.164.
  - Runs on the controller only; changes nothing on any host.
options: {}
author: vPBX CallBack
"""

EXAMPLES = r"""
- name: Validate the inventory before touching any host
  vpbx_inventory:
"""

RETURN = r"""
ansible_facts:
  description: C(vpbx_config), the normalized contract.
  returned: success
  type: dict
"""
