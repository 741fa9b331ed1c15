"""QKD devices: the device emulator and the ETSI GS QKD 014 device key source (docs/kms.md, "Link keys from devices").

- :mod:`.emulator`: ``qkdseg device serve``, each link's pair of devices as ETSI 014 KMEs (SAEs are the link's
  ends), with its control API (counters, faults).
- :mod:`.source`: the key source that fetches each link's keys from its two devices (``enc_keys`` at one end,
  ``dec_keys`` at the other) for ``kms serve``; :func:`.source.enc_round` is the round the network's device-fed
  links (:mod:`qkdseg.net.devicelinks`) run too.

Used by both deployments; imports the shared server core (:mod:`qkdseg.server`) and neither deployment.
"""
