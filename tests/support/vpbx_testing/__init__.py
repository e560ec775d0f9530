"""What the tests and the benches drive the PBX with: SIPp peers (sipp, peers),
SIP written by hand (raw_sip), RTP pcaps (rtp_pcap), the wire (wire), the
lab's services (services, health) and the peers' addresses (loopbacks).

Installed (editable) in the project's virtualenv by `make venv`, so that
tests/e2e, tests/integration, tests/cluster and bench/ import it alike.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
