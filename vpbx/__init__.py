"""vPBX CallBack's shared model: numbers, inventory, call decision.

Pure Python, imported by the playbook (validation, rendering), the KEMI script
(per INVITE) and the callback engine. Nothing here touches the network.
"""
