"""The guard: what must not leave the machine (secrets, oversized files).

- :mod:`.rules`, :mod:`.scanner`, :mod:`.placeholders`, :mod:`.findings`,
  :mod:`.allowlist`, :mod:`.sizeguard`: pure detection; paths and bytes in, findings out.
- :mod:`.judge`: the verdict on one blob (cached by blob id), with the allowlist and
  the releases applied; :mod:`.store`: the installation key and the release records.
- :mod:`.gate`: the committer's hooks (staged blobs, pushes), reading git through the
  gateway.
"""
