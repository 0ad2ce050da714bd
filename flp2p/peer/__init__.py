"""Helpers of the peer runtime (``python -m flp2p.client`` and the aggregator role).

One module per concern:

* :mod:`~flp2p.peer.participant` — the command line of ``python -m flp2p.client``
  (standard library only: bad options fail before Flower or PyTorch load);
* :mod:`~flp2p.peer.runtime` — the peer loop: join, follow, stand by, hold;
* :mod:`~flp2p.peer.addresses` — ``--listen`` / ``--advertise``: bind here, tell
  others that;
* :mod:`~flp2p.peer.aggregator` — the aggregator role (SuperLink, run, lease);
* :mod:`~flp2p.peer.tls` — self-signed SuperLink certificates, fingerprint pinning;
* :mod:`~flp2p.peer.checkpoints` — global models by round, the resume point;
* :mod:`~flp2p.peer.election` — the deterministic successor election;
* :mod:`~flp2p.peer.standby_sync` — signed checkpoint pushes to standby aggregators,
  and audit requests to the round's committee;
* :mod:`~flp2p.peer.auditor` — the auditor role: re-run a round, co-sign or refuse;
* :mod:`~flp2p.peer.leases` — lease lookups that say why a lease was refused;
* :mod:`~flp2p.peer.processes` — SuperLink / SuperNode subprocesses;
* :mod:`~flp2p.peer.supernode` — a SuperNode that follows the lease;
* :mod:`~flp2p.peer.app_folder`, :mod:`~flp2p.peer.federation_app` — the Flower App the
  aggregator submits (resumable ServerApp, peer ClientApp);
* :mod:`~flp2p.peer.founder` — ``python -m flp2p.peer.founder``, the bootstrap peer
  that publishes a federation's genesis.
"""
