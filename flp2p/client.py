"""``python -m flp2p.client``: take part in an flp2p federation from one machine.

The participant itself lives in :mod:`flp2p.peer.participant`; this module is the
entry point the README, the design card and ``flp2p join`` name.
"""

from __future__ import annotations

import sys

from flp2p.peer.participant import main

if __name__ == "__main__":
    sys.exit(main())
