"""The key service as a network of processes: one KME per node, a controller, relay over mutual TLS.

docs/network.md describes the processes, what each holds and sees, and the messages.

- :mod:`.layout`: ``qkdseg net init``: the deployment's PKI, the controller's and the nodes' directories.
- :mod:`.inventory`, :mod:`.certs`, :mod:`.enroll`, :mod:`.bundle`: across hosts: ``net init --inventory``, the
  certificates' profile and CSRs, ``node keygen`` / ``controller keygen`` / ``net sign`` / ``net sae cert``, and
  ``net bundle`` (docs/network.md, "Deploying one node per host").
- :mod:`.keystream`: the emulated QKD link, a seekable ChaCha20 keystream per direction.
- :mod:`.wire`: mutual TLS, certificate roles, RFC 9457 problem details, the node's relay store.
- :mod:`.node`: ``qkdseg node serve``, a node's KME (no routing: no numba, no scipy).
- :mod:`.controller`: ``qkdseg controller serve``, the centralized server (no key material).
- :mod:`.procs`: ``qkdseg net up|down|status``.

Its commands (``qkdseg net|node|controller``) are :mod:`qkdseg.cli.net`.
"""
