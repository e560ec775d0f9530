"""A lab of hosts on one machine: each host a network namespace with its own
addresses and its own /etc, /var, /opt, /usr/local, /run, /tmp and /dev,
held open by one process whose pid Ansible enters (the vpbx_nsenter
connection plugin). `python -m cluster up` builds what is missing,
`python -m cluster down` removes it all; stdlib and PyYAML only.
"""
