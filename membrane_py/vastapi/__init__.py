"""VAST remote-control API: wire codec, client, run-length coding and .vsvi descriptors."""
